#!/usr/bin/env bash
# A non-Python tool as a Runpack job: a shell script in an image built from Debian's
# busybox-static (no registry), run by the `container` job type, end to end from
# `runpack submit … --wait`.
#
#   apt-get install docker.io busybox-static   # and a running dockerd
#   pip install -e ".[server,container]"
#   examples/container/run.sh "the text whose words to count"
#
# It imports the image, starts a server and a runner that allows the image (by
# repository, any digest: RUNPACK_CONTAINER_IMAGES=runpack-example/wordcount@*),
# submits the job by the image's digest, and removes all of it on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
text=${1:-"the quick brown fox jumps over the lazy dog the end"}
port=${PORT:-8095}
url="http://127.0.0.1:$port"
work=$(mktemp -d)
repository=runpack-example/wordcount
tag=$(basename "$work" | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9')
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    docker rmi "$repository:$tag" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# 1. The image: busybox's applets, the tool, and /tmp as images have it.
root="$work/root"
mkdir -p "$root/bin" "$root/app" "$root/etc" "$root/outputs" "$root/tmp"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
cp "$here/wordcount.sh" "$root/app/wordcount.sh"
echo 'nobody:x:65534:65534::/:/bin/sh' >"$root/etc/passwd"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - "$repository:$tag" >/dev/null
image_id=$(docker image inspect --format '{{.Id}}' "$repository:$tag")
echo "image $repository:$tag is $image_id"

# 2. A server and a runner that allows the image.
export RUNPACK_SUBMIT_API_KEY=example-submit RUNPACK_RUNNER_API_KEY=example-runner
export RUNPACK_ADMIN_API_KEY=example-admin
runpack serve --host 127.0.0.1 --port "$port" --db "$work/runpack.db" \
    --data-dir "$work/data" >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "$url/health" 2>/dev/null && break
    sleep 0.1
done
(cd "$work" && RUNPACK_WORKER_URL="$url" RUNPACK_JOB_TYPES=container \
    RUNPACK_CONTAINER_IMAGES="$repository@*" RUNPACK_LOG_FILE="" \
    exec runpack-runner >"$work/runner.log" 2>&1) &
pids+=($!)

# 3. The job, named by digest: the image is part of its cache key.
params=$(printf '{"image": "%s@%s", "command": ["/app/wordcount.sh"], "env": {"TEXT": "%s"}}' \
    "$repository" "$image_id" "$text")
runpack submit container --url "$url" --json-params "$params" --wait
