"""Ledger records for tests that write the ledger directly (the writer's, the budget rebuild's)."""

from __future__ import annotations

from policies.actions import UsageRecord


def usage_record(session_id: str, tenant_id: str, response_id: str, occurred_at: float, cost: int) -> UsageRecord:
    """One completed response: 10 text tokens in; 5 text and 15 audio tokens out."""
    return UsageRecord(
        response_id=response_id,
        session_id=session_id,
        tenant_id=tenant_id,
        model="gpt-realtime",
        status="completed",
        occurred_at=occurred_at,
        input_tokens=10,
        output_tokens=20,
        total_tokens=30,
        input_text_tokens=10,
        input_audio_tokens=0,
        input_image_tokens=0,
        cached_text_tokens=0,
        cached_audio_tokens=0,
        cached_image_tokens=0,
        output_text_tokens=5,
        output_audio_tokens=15,
        cost_micro_usd=cost,
        price_version="test",
    )
