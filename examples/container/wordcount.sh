#!/bin/sh
# The tool the image runs: counts the words of $TEXT, most frequent first.
# Writes /outputs/counts.txt and /outputs/index.html; prints progress lines.
set -e
echo "counting the words of ${#TEXT} characters"
echo "RUNPACK_PROGRESS 0/2"
printf '%s\n' "$TEXT" | tr -s ' \t' '\n\n' | grep -v '^$' | sort | uniq -c | sort -rn >/outputs/counts.txt
echo "RUNPACK_PROGRESS 1/2"
echo "$(wc -l </outputs/counts.txt) distinct words"
{
    echo "<!doctype html><title>Word counts</title><h1>Word counts</h1><pre>"
    cat /outputs/counts.txt
    echo "</pre>"
} >/outputs/index.html
echo "RUNPACK_PROGRESS 2/2"
