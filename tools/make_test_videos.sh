#!/usr/bin/env bash
# Makes the tiny test videos under tests/fixtures/video/ with FFmpeg (libx264,
# libvpx-vp9, aac). Each frame is one flat colour that encodes its frame
# number n: red = (n mod 16) * 16 + 8, green = floor(n / 16) * 16 + 8, blue = 128
# (steps of 16 survive YUV 4:2:0 and lossy coding), so a test can tell which
# source frames were picked.
set -euo pipefail
out="$(dirname "$0")/../tests/fixtures/video"
mkdir -p "$out"
cd "$out"

# The frame-number colour as a filter chain on a `color` source.
colour='format=rgb24,geq=r=mod(N\,16)*16+8:g=floor(N/16)*16+8:b=128'
x264=(-c:v libx264 -preset veryslow -crf 18 -profile:v high -bf 3 -pix_fmt yuv420p)
common=(-y -hide_banner -loglevel error)
# Reproducible files: no encoder version string or creation time.
exact=(-map_metadata -1 -fflags +bitexact -flags:v +bitexact)

# H.264 High profile with B-frames, 25 fps, 4 s.
ffmpeg "${common[@]}" -f lavfi -i "color=c=black:s=64x48:r=25:d=4,$colour" "${x264[@]}" "${exact[@]}" h264_25fps.mp4
# 29.97 fps (30000/1001), 3 s.
ffmpeg "${common[@]}" -f lavfi -i "color=c=black:s=64x48:r=30000/1001:d=3,$colour" "${x264[@]}" "${exact[@]}" h264_29.97fps.mp4
# Variable frame rate: 25 frames at 25 fps (1 s), then 25 frames at 10 fps (2.5 s).
ffmpeg "${common[@]}" -f lavfi -i "color=c=black:s=64x48:r=25:d=2,$colour,setpts='if(lt(N,25),N*0.04,1+(N-25)*0.1)/TB'" \
    "${x264[@]}" -vsync vfr -video_track_timescale 1000 "${exact[@]}" h264_vfr.mp4
# Odd size (needs 4:4:4: 4:2:0 wants even sizes), 2 s at 25 fps.
ffmpeg "${common[@]}" -f lavfi -i "color=c=black:s=321x241:r=25:d=2,$colour" \
    -c:v libx264 -preset veryslow -crf 18 -profile:v high444 -bf 3 -pix_fmt yuv444p "${exact[@]}" h264_321x241.mp4
# A 0.5 s clip (12 frames at 24 fps).
ffmpeg "${common[@]}" -f lavfi -i "color=c=black:s=64x48:r=24:d=0.5,$colour" "${x264[@]}" "${exact[@]}" h264_0.5s.mp4
# VP9 in WebM, 24 fps, 2 s.
ffmpeg "${common[@]}" -f lavfi -i "color=c=black:s=64x48:r=24:d=2,$colour" -c:v libvpx-vp9 -crf 30 -b:v 0 -pix_fmt yuv420p "${exact[@]}" vp9_24fps.webm
# Bad inputs: only an audio track; longer than the model allows (150 s at 0.2 fps).
ffmpeg "${common[@]}" -f lavfi -i "sine=frequency=440:duration=0.5" -c:a aac "${exact[@]}" audio_only.mp4
ffmpeg "${common[@]}" -f lavfi -i "color=c=gray:s=16x16:r=0.2:d=150" "${x264[@]}" "${exact[@]}" too_long_150s.mp4
# Zero-length: an mp4 with no frames at all.
ffmpeg "${common[@]}" -f lavfi -i "color=c=black:s=64x48:r=25:d=1" -frames:v 0 -c:v libx264 "${exact[@]}" zero_length.mp4
ls -l
