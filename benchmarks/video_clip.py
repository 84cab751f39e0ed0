"""The speed issue's test clip as a user's video is: `upsample make-clip`'s lossless frames
re-encoded to H.264 crf 18 (yuv420p) in MP4 with a 440 Hz AAC track beside them.

    python benchmarks/video_clip.py LOSSLESS.mkv OUT.mp4
"""

from __future__ import annotations

import sys

import av
import numpy as np


def transcode_with_tone(src: str, dst: str) -> int:
    """Frames written; the tone lasts as long as the video."""
    with av.open(src) as inp, av.open(dst, "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream("libx264", rate=vin.average_rate, options={"crf": "18"})
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        aout = out.add_stream("aac", rate=48000, layout="stereo")
        frames = 0
        for frame in inp.decode(vin):
            out.mux(vout.encode(frame.reformat(format="yuv420p")))
            frames += 1
        out.mux(vout.encode())
        seconds = frames / float(vin.average_rate)
        t = np.arange(int(seconds * 48000)) / 48000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for i in range(0, len(tone), 1024):
            chunk = np.ascontiguousarray(np.stack([tone[i:i + 1024]] * 2))
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            af.sample_rate, af.pts = 48000, i
            out.mux(aout.encode(af))
        out.mux(aout.encode())
    return frames


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    print(f"{sys.argv[2]}: {transcode_with_tone(sys.argv[1], sys.argv[2])} frames, AAC beside them")
