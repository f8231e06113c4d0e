"""Inbound SIP on GPT-Live: OpenAI's webhooks, routed to tenants by called number (docs/live.md#sip).

* `inbound`: `POST /v1/openai/webhooks`, verified with `VOXGATE_OPENAI_WEBHOOK_SECRET`;
* `config`: the operator's routing (called numbers) and each tenant's webhook, over the admin API;
* `delivery`: the durable outbox that delivers a routed call to the tenant's webhook.

The accept itself is a Live control (gateway/webrtc/live_sip.py). This package sits above the
transports (it uses gateway.webrtc and gateway.admin); no transport imports it.
"""
