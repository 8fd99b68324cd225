"""SMS over SMPP v3.4: the ``smpp`` channel provider.

:class:`SmppProvider` keeps one ``bind_transceiver`` session per configured SMSC connection
(:mod:`cascade.channels.smpp.config`), submits each SMS as one ``submit_sm`` per part, and turns
every ``deliver_sm`` into a :class:`~cascade.channels.base.Receipt` or an
:class:`~cascade.channels.base.InboundMessage` for the engine's sink.

The package, by seam: :mod:`~cascade.channels.smpp.framing` (PDUs on the wire, status names),
:mod:`~cascade.channels.smpp.link` (one TCP connection: batched writes, responses matched to
requests), :mod:`~cascade.channels.smpp.flow` (backoff, the token bucket, the submit window and
throttle holds),
:mod:`~cascade.channels.smpp.reassembly` (concatenated inbound parts),
:mod:`~cascade.channels.smpp.delivery` (deliver_sm: receipts and MO messages to the sink),
:mod:`~cascade.channels.smpp.session` (:class:`SmppConnection`, one bind),
:mod:`~cascade.channels.smpp.provider` (:class:`SmppProvider`), with the Nexmo codes in
:mod:`~cascade.channels.smpp.errors` and the counters in :mod:`~cascade.channels.smpp.metrics`.

The session. PDUs are built with aiosmpplib's protocol classes and texts encoded with its
``gsm0338`` codec (through :mod:`cascade.channels.gsm`); the session loop around them is this
package's, not ``aiosmpplib.ESME``, because the ESME does not fit the seam: it reports submit
results through hooks instead of to the caller, answers every ``deliver_sm`` with ``ESME_ROK``
on its own, and drops the whole session on input that real SMSCs send (a receipt with 12-digit
dates fails its ``parse_receipt``; a vendor ``command_status`` of 0x400 and above fails its
header parser). Here: ``submit_sm`` responses are matched to their caller by sequence number;
at most ``window_size`` submits await a response; a token bucket holds submits to
``throughput`` per second, evenly spaced unless ``throughput_burst`` allows bursts (this
engine's share of them when several hold the connection: :mod:`cascade.engine.shares`);
``enquire_link`` runs every ``enquire_link_interval`` and an unanswered one drops the link; a
lost or refused bind is retried with exponential backoff.

Throttling. An ``ESME_RTHROTTLED`` starts an episode: submits hold back for the throttle
backoff; the other answers of the window (submits written before the hold began) belong to the
same episode and do not lengthen it; only a submit written after the hold and throttled again
doubles it. New messages turned away during a hold are told to come back one ``1/throughput``
after another (jittered over the hold without a throughput), not all at the hold's end.

Ids. The SMSC numbers its message ids per account and may count from the start again after a
restart, so the result names the id space, ``smpp:<system_id>@<host>:<port>``
(:attr:`SmppConnectionSettings.id_space`), which receipts carry too: binds to different SMSCs
never share ids, binds to one SMSC account do (a receipt may come on any of them), and the
engine re-points an id that an older message still holds to the new one.

Sending. The text goes as GSM-7 when every character allows it, else UCS-2; a long text is
split into UDH-concatenated parts (:mod:`cascade.channels.gsm`), submitted in order, each with
``registered_delivery`` 1 (a receipt on success and on failure). The result's
``provider_message_id`` is the first part's SMSC id and ``segment_ids`` holds every part's id
in order (the first included), because every part gets its own receipt: the engine maps each
of those ids to the message and applies :func:`cascade.domain.status.combine_parts`
(rejected as soon as any part fails, delivered once every part is). ``price`` is
``segments x price_per_segment`` of the connection. Ids are normalised with
:func:`cascade.channels.receipts.normalise_message_id`, the same function receipts go through.

Errors, as the engine sees them:

=====================================  ====================================  ===============
what happened                          raised                                Nexmo code
=====================================  ====================================  ===============
``ESME_RTHROTTLED`` 0x58,              ChannelUnavailable, ``retry_after``   1000 Throttled
``ESME_RMSGQFUL`` 0x14                 = the rest of the hold, spread
window full, throughput limit          ChannelUnavailable                    1000
``ESME_RSYSERR`` 0x08                  ChannelUnavailable (the SMSC's own    1331
                                       failure; retrying can help)
not bound (connecting, bind refused,   ChannelUnavailable, ``retry_after``   1100
connection lost before the write)      = time to the next bind attempt       Communication
                                                                             failed
no response within                     :class:`SmppSubmitUnconfirmed`        1100
``response_timeout``, or connection    (a ChannelUnavailable: the SMSC may
lost after the ``submit_sm`` was       have accepted it, so a retry may
written                                send it twice)
any other ``command_status``           ChannelRejected                       see below
=====================================  ====================================  ===============

``command_status`` to Nexmo code (:data:`~cascade.channels.smpp.errors.SUBMIT_STATUS_CODES`):
0x01 invalid length -> 1090 message too long; 0x0A, 0x48, 0x49 source address/TON/NPI -> 1120
illegal sender address; 0x0B, 0x50, 0x51 destination -> 1170 invalid or missing MSISDN; 0x62
validity -> 1130 invalid TTL; 0x44 distribution list -> 1140 facility not allowed; 0xC3 missing
TLV -> 1010 missing params; other parameter errors (0x06, 0x07, 0x0C, 0x15, 0x33, 0x34, 0x40,
0x42, 0x43, 0x54, 0x55, 0x61, 0x63, 0xC0-0xC2, 0xC4) -> 1020 invalid params; PDU or bind-state
errors of ours (0x02-0x05, 0x53) -> 1030 internal error; 0xFE delivery failure -> 1230 network
error; 0xFF -> 1330 unknown; 0x45 submit failed, 0x66, vendor codes (0x400-0x4FF) and anything
else -> 1331 provider error. A later part refused after earlier parts were accepted is still a
ChannelRejected; a later part throttled is retried here (up to
:data:`~cascade.channels.smpp.session.PART_RETRIES` times) rather than failing a message that is
partly out.

Receipts and inbound messages. Each ``deliver_sm`` is handled in its own task (at most
``window_size`` at once) and answered with ``deliver_sm_resp`` only after the sink returned,
so a receipt that was not stored is sent again by the SMSC:

* a receipt becomes ``sink.receipt(...)`` with the part's id, whether or not ``send`` has
  returned yet (the engine stores receipts for ids it does not know yet; nothing is held back
  here); ``ENROUTE``/``ACCEPTD`` change nothing and are only answered;
* an MO message becomes ``sink.inbound(...)``; the parts of a concatenated one (UDH or SAR TLVs)
  are kept in memory until the last arrives (at most ``inbound_part_ttl`` seconds), and only
  that last part's answer waits for the sink; ``extra["num_messages"]`` is the part count;
* when the sink raises, the error is logged and the ``deliver_sm`` answered with
  ``ESME_RX_T_APPN`` (0x64, temporary application error), so the SMSC delivers it again;
* a receipt without an id or a readable state, or a PDU that cannot be decoded, is logged with
  its content, counted (``cascade_smpp_deliver_sm_total{outcome="malformed"}``) and answered
  with ``ESME_ROK``: sending it again would not make it readable.

``Receipt.at`` and ``InboundMessage.at`` are the time of arrival on the injected clock (the
SMSC's own dates carry no time zone).
"""

from __future__ import annotations

from cascade.channels.smpp.errors import SmppSubmitUnconfirmed
from cascade.channels.smpp.provider import SmppProvider

__all__ = ["SmppProvider", "SmppSubmitUnconfirmed"]
