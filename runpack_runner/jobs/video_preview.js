/*
 * runpack.VideoPreview: an H.264 MP4 stored in the figure's zarr data, played by the
 * browser's own <video> element (hardware decoding, smooth at any frame rate).
 */

const loadVideo = async (zarrGroup) => {
  const data = await zarrGroup.getDatasetData("video_data", {});
  if (!data || data.length === 0) {
    throw new Error("The figure has no video data");
  }
  return new Blob([new Uint8Array(data)], { type: "video/mp4" });
};

const el = (tag, style, text) => {
  const node = document.createElement(tag);
  Object.assign(node.style, style || {});
  if (text !== undefined) node.textContent = text;
  return node;
};

const renderVideoPreview = async (params) => {
  const { container, zarrGroup, width, height, onResize } = params;
  container.innerHTML = "";
  const attrs = zarrGroup.attrs || {};
  const root = el("div", {
    width: `${width}px`,
    height: `${height}px`,
    display: "flex",
    flexDirection: "column",
    background: "#111",
    color: "#ddd",
    fontFamily: "system-ui, -apple-system, sans-serif",
    fontSize: "13px",
  });
  root.className = "runpack-video-preview";
  const stage = el("div", { flex: "1", minHeight: "0", display: "flex", justifyContent: "center" });
  const video = el("video", { maxWidth: "100%", maxHeight: "100%", imageRendering: "pixelated" });
  video.controls = true;
  video.loop = true;
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  stage.appendChild(video);
  const bar = el("div", { padding: "4px 8px", display: "flex", gap: "12px", alignItems: "center" });
  const info = el(
    "span",
    {},
    `${attrs.num_frames} of ${attrs.total_frames} frames · ${attrs.width}×${attrs.height} · ` +
      `${Number(attrs.fps).toFixed(2)} fps · ${attrs.color ? "RGB" : "grey"}`
  );
  const speed = el("select", {});
  for (const rate of [0.25, 0.5, 1, 2, 4]) {
    const option = el("option", {}, `${rate}×`);
    option.value = String(rate);
    option.selected = rate === 1;
    speed.appendChild(option);
  }
  speed.onchange = () => {
    video.playbackRate = Number(speed.value);
  };
  bar.appendChild(info);
  bar.appendChild(speed);
  root.appendChild(stage);
  root.appendChild(bar);
  container.appendChild(root);

  let objectUrl = null;
  try {
    objectUrl = URL.createObjectURL(await loadVideo(zarrGroup));
    video.src = objectUrl;
    video.onerror = () => {
      info.textContent = "This browser cannot play the video (H.264 MP4).";
    };
  } catch (error) {
    console.error("runpack video preview:", error);
    stage.replaceChildren(el("div", { margin: "auto" }, `Video preview error: ${error.message}`));
  }
  onResize((newWidth, newHeight) => {
    root.style.width = `${newWidth}px`;
    root.style.height = `${newHeight}px`;
  });
  return {
    destroy: () => {
      video.removeAttribute("src");
      if (objectUrl) URL.revokeObjectURL(objectUrl);
    },
  };
};

window.figpack_p1.registerFPViewComponent({
  name: "runpack.VideoPreview",
  render: renderVideoPreview,
});
window.figpack_p1.registerFPExtension({ name: "runpack-video-preview" });
