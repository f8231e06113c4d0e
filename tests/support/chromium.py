"""Headless Debian Chromium for browser tests: where it is, the flags it needs, and a fake microphone.

No browser is downloaded: tests drive the system's `chromium` package through Playwright
(`executable_path`). `.ci/run` installs the package on a CI machine that lacks it.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import wave
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
MIC_RATE = 48_000


def find_chromium() -> str | None:
    """`VOXGATE_TEST_CHROMIUM`, else Debian's chromium, else whatever `chromium` is on PATH."""
    configured = os.environ.get("VOXGATE_TEST_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = next((c for c in CANDIDATES if os.access(c, os.X_OK)), None)
    return found or shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_args(fake_mic: Path) -> list[str]:
    """Flags that let Chromium call the emulator's loopback-only WebRTC peer with a fake microphone."""
    return [
        # Gather 127.0.0.1 host candidates. Chromium skips loopback by default, and the emulator
        # answers on 127.0.0.1 only; on a machine whose only interface is `lo` there would be none.
        "--allow-loopback-in-peer-connection",
        # Offer real addresses, not mDNS `.local` names (resolving those would need multicast DNS).
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        # getUserMedia without a prompt, from a fake device that plays `fake_mic` once.
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]


def write_utterance(path: Path, *, lead_ms: int = 400, speech_ms: int = 1200, tail_ms: int = 3000) -> Path:
    """A WAV the emulator's VAD hears as one utterance: silence, a voiced tone, then silence.

    The tone is a 200 Hz fundamental with harmonics and a syllable-rate envelope, loud enough
    to stay well above the VAD threshold after the browser's audio processing.
    """
    frames = bytearray()
    total = (lead_ms + speech_ms + tail_ms) * MIC_RATE // 1000
    start, stop = lead_ms * MIC_RATE // 1000, (lead_ms + speech_ms) * MIC_RATE // 1000
    for i in range(total):
        sample = 0.0
        if start <= i < stop:
            t = i / MIC_RATE
            envelope = 0.6 + 0.4 * math.sin(2 * math.pi * 4 * t)
            voiced = sum(math.sin(2 * math.pi * 200 * k * t) / k for k in (1, 2, 3, 4))
            sample = 0.25 * envelope * voiced
        frames += struct.pack("<h", int(max(-1.0, min(1.0, sample)) * 32767))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE)
        out.writeframes(bytes(frames))
    return path
