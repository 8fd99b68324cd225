"""The OpenAPI 3.1 document, generated from the same Structs that decode requests."""

from __future__ import annotations

import html
from functools import cache
from typing import Any

import msgspec

from cascade import __version__
from cascade.api.problems import ProblemDocument
from cascade.domain.message import MessageRequest, WorkflowRequest
from cascade.domain.message_v1 import MessageRequestV1, MessageUpdateV1

_REF = "#/components/schemas/{name}"


def _accepted(id_field: str, description: str) -> dict[str, Any]:
    return {
        "description": "Accepted: stored durably; statuses follow by webhook",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": [id_field],
                    "properties": {
                        id_field: {"type": "string", "format": "uuid", "description": description}
                    },
                }
            }
        },
    }


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(name="ProblemDocument")}},
        },
    }


def _operation(summary: str, schema: str, id_field: str, description: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearerAuth": []}, {"basicAuth": []}],
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 255},
                "description": "Retrying with the same key and body returns the first response.",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=schema)}}},
        },
        "responses": {
            "202": _accepted(id_field, description),
            "400": _problem("The body is invalid; invalid_parameters names every bad field"),
            "401": _problem("Missing or wrong credentials"),
            "409": _problem("The Idempotency-Key was used with another body"),
            "413": _problem("The body is too large"),
            "415": _problem("The body is not application/json"),
        },
    }


_LIST_PARAMETERS = [
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Workflows: running, completed, error. Messages: a status.",
    },
    {
        "name": "channel",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Messages only: sms, mms, whatsapp, messenger, viber_service_msg",
    },
    {"name": "created_after", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "created_before", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {
        "name": "page_size",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
    },
    {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": "From _links.next.href of the previous page",
    },
]


def _read(summary: str, description: str, *, listing: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": description,
        "security": [{"bearerAuth": []}, {"basicAuth": []}],
        "responses": {
            "200": {
                "description": "Found",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "401": _problem("Missing or wrong credentials"),
            "404": _problem("No such id in your account"),
        },
    }
    if listing:
        operation["parameters"] = _LIST_PARAMETERS
        operation["responses"]["400"] = _problem("A query parameter is invalid")
    else:
        operation["parameters"] = [
            {"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
    return operation


def _v1_operation() -> dict[str, Any]:
    """``POST /v1/messages``: v1 answers 422 (not 400) to a body that does not validate, and
    adds ``workflow_id`` to its 202 when the message has failover messages."""
    operation = _operation(
        "Send a message, with failover (Messages v1)",
        "MessageRequestV1",
        "message_uuid",
        "The first message's id",
    )
    schema = operation["responses"]["202"]["content"]["application/json"]["schema"]
    schema["properties"]["workflow_id"] = {
        "type": "string",
        "format": "uuid",
        "description": "With failover: the workflow, readable at GET /v0.1/dispatch/{id}",
    }
    responses = operation["responses"]
    del responses["400"]
    responses["422"] = _problem(
        "The body is not JSON or is invalid; type and title name the kind of problem, "
        "invalid_parameters every bad field"
    )
    return operation


def _v1_update_operation() -> dict[str, Any]:
    """``PATCH /v1/messages/{message_uuid}``: marking an inbound WhatsApp message read."""
    problem_codes = {
        "401": "Wrong or missing credentials",
        "404": "The account has no message of this id",
        "422": "The body is not JSON or is invalid; the status is not offered (revoked: no "
        "RCS); the message is not an inbound WhatsApp message, or its number is no longer "
        "linked; WhatsApp refused the read mark (type and title carry the Nexmo code)",
        "429": "WhatsApp is limiting requests",
        "502": "WhatsApp refused the number's access token, or did not answer",
        "503": "WhatsApp could not be reached or failed; nothing was marked",
    }
    return {
        "summary": "Mark an inbound WhatsApp message read (Messages v1)",
        "security": [{"bearerAuth": []}, {"basicAuth": []}],
        "parameters": [
            {
                "name": "message_uuid",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "The message_uuid of the inbound webhook",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(name="MessageUpdateV1")}}
            },
        },
        "responses": {
            "200": {
                "description": "WhatsApp marked the message read",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **{code: _problem(text) for code, text in problem_codes.items()},
        },
    }


@cache
def openapi_document() -> bytes:
    """The whole document as JSON bytes (built once)."""
    (_, _, _, _, _), components = msgspec.json.schema_components(
        (MessageRequest, WorkflowRequest, MessageRequestV1, MessageUpdateV1, ProblemDocument),
        ref_template=_REF,
    )
    message = _operation("Send a message", "MessageRequest", "message_uuid", "The message's id")
    dispatch = _operation(
        "Send a failover workflow", "WorkflowRequest", "dispatch_uuid", "The workflow's id"
    )
    workflows = _operation(
        "Send a failover workflow (2018 preview)",
        "WorkflowRequest",
        "workflow_uuid",
        "The workflow's id",
    )
    workflow_read = _read(
        "Read a dispatch",
        "Every step, every status with its time and source, each send retried with its error "
        "and next attempt, failover reasons, cost, webhooks with the status each carried "
        "(a plain message's workflow id is a 404: it is read as a message)",
    )
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Cascade",
            "version": __version__,
            "description": "Self-hosted Nexmo Messages v0.1 and Dispatch v0.1 (failover), "
            "and Vonage Messages v1 with failover.",
        },
        "paths": {
            "/v0.1/messages": {
                "post": message,
                "get": _read("List messages", "Newest first, filtered, paged", listing=True),
            },
            "/v0.1/messages/{uuid}": {
                "get": _read(
                    "Read a message",
                    "Its statuses over time, its timeline (retries included) and its webhooks",
                )
            },
            "/beta/messages": {"post": message},
            "/v0.1/dispatch": {
                "post": dispatch,
                "get": _read(
                    "List dispatches",
                    "Newest first, filtered, paged; dispatches only (plain messages are listed "
                    "under /v0.1/messages)",
                    listing=True,
                ),
            },
            "/v0.1/dispatch/{uuid}": {"get": workflow_read},
            "/beta/workflows": {"post": workflows},
            "/beta/workflows/{uuid}": {"get": workflow_read},
            "/v1/messages": {"post": _v1_operation()},
            "/v1/messages/{message_uuid}": {"patch": _v1_update_operation()},
            "/health": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "basicAuth": {"type": "http", "scheme": "basic"},
            },
        },
    }
    return msgspec.json.encode(document)


@cache
def docs_page() -> str:
    """A plain HTML page listing the operations and schemas."""
    document = msgspec.json.decode(openapi_document())
    rows = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code>"
                f"</td><td>{html.escape(operation['summary'])}</td></tr>"
            )
    schemas = "".join(
        f"<h3 id='{html.escape(name)}'>{html.escape(name)}</h3>"
        f"<pre>{html.escape(msgspec.json.format(msgspec.json.encode(schema)).decode())}</pre>"
        for name, schema in document["components"]["schemas"].items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Cascade API</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "pre{background:#f4f4f4;padding:1em;overflow:auto}td{padding:.2em 1em}</style>"
        "</head><body><h1>Cascade API</h1>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a></p>"
        f"<table>{''.join(rows)}</table><h2>Schemas</h2>{schemas}</body></html>"
    )
