"""SDP offers as the broker takes them: bounded, ASCII, `<type>=<value>` lines (docs/webrtc.md).

The broker never interprets an offer; it refuses what cannot be one before upstream pays
for it: at most `MAX_SDP_BYTES`, starting with `v=0`, with `o=`, `s=` and `m=` lines.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.errors import GatewayError

MAX_SDP_BYTES: Final = 64 * 1024
SDP_MEDIA_TYPE: Final = "application/sdp"
_SDP_LINE: Final = re.compile(r"[a-z]=[\x20-\x7e\t]*")
_REQUIRED_KINDS: Final = ("o", "s", "m")


def invalid_sdp(message: str) -> GatewayError:
    return GatewayError(400, f"Invalid SDP offer: {message}", code="invalid_sdp", param="sdp")


def sdp_too_large() -> GatewayError:
    return GatewayError(
        413, f"The SDP offer is larger than {MAX_SDP_BYTES // 1024} KiB.", code="sdp_too_large", param="sdp"
    )


def validate_sdp(raw: bytes) -> str:
    """The offer as text if it is a plausible SDP session description; else 413/400."""
    if len(raw) > MAX_SDP_BYTES:
        raise sdp_too_large()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise invalid_sdp("it must be ASCII text.") from None
    lines = [line.removesuffix("\r") for line in text.rstrip("\r\n").split("\n")]
    if not lines or lines[0] != "v=0":
        raise invalid_sdp("it must start with 'v=0'.")
    for number, line in enumerate(lines, 1):
        if not _SDP_LINE.fullmatch(line):
            raise invalid_sdp(f"line {number} is not a '<type>=<value>' line.")
    kinds = {line[0] for line in lines}
    for kind in _REQUIRED_KINDS:
        if kind not in kinds:
            raise invalid_sdp(f"it has no '{kind}=' line.")
    return text
