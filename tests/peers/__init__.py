"""Fake platforms for the linked channels: real HTTP servers on 127.0.0.1 that speak the Graph
API (Messenger, WhatsApp) and the Viber Bot API, check what they are sent, answer as the
platforms document, and send signed callbacks the way the platforms do."""
