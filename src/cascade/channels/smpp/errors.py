"""What the engine sees of an SMPP failure: the Nexmo codes and :class:`SmppSubmitUnconfirmed`.

The table in the package doc (:mod:`cascade.channels.smpp`) says which failure raises what;
the numbers live here, apart from the session, because both the session and the flow control
(whose refusals are Nexmo's 1000 "Throttled") raise them.
"""

from __future__ import annotations

from cascade.errors import ChannelOutcomeUnknown

#: Nexmo asynchronous error codes used here
CODE_THROTTLED = 1000
CODE_COMMUNICATION_FAILED = 1100
CODE_PROVIDER_ERROR = 1331

#: submit_sm_resp command_status -> Nexmo asynchronous error code (default 1331)
SUBMIT_STATUS_CODES: dict[int, int] = {
    0x01: 1090,
    **dict.fromkeys((0x02, 0x03, 0x04, 0x05, 0x53), 1030),
    **dict.fromkeys(
        (0x06, 0x07, 0x0C, 0x15, 0x33, 0x34, 0x40, 0x42, 0x43, 0x54, 0x55, 0x61, 0x63),
        1020,
    ),
    **dict.fromkeys((0xC0, 0xC1, 0xC2, 0xC4), 1020),
    0xC3: 1010,
    **dict.fromkeys((0x0A, 0x48, 0x49), 1120),
    **dict.fromkeys((0x0B, 0x50, 0x51), 1170),
    0x44: 1140,
    0x62: 1130,
    0xFE: 1230,
    0xFF: 1330,
}


class SmppSubmitUnconfirmed(ChannelOutcomeUnknown):
    """The submit_sm was written but not answered: the SMSC may have accepted the message."""
