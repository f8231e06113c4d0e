"""`VOXGATE_PRICE_FILE`: operators add or override prices without a release.

The file is read at start and laid over the built-in table (the file wins per model); the
rows it prices carry its `version`. Any fault stops `voxgate serve` with one line that names
the file and the dotted key. Amounts are exact decimal strings; floats are refused.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
import websockets
import yaml
from openai import AsyncOpenAI
from websockets.exceptions import InvalidStatus

from gateway.app import create_app
from gateway.price_file import PriceFileError, load_prices, read_price_sheet
from gateway.settings import PricingSettings, Settings, SettingsError
from policies.admission import AdmissionSnapshot, Admit, decide_admission
from policies.metering import transcription_record, usage_record
from policies.policy import UNRESTRICTED
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.rates import DurationPrice, TokenPrice, TranscriptionPrice
from policies.prices.sheet import dump_price_sheet
from policies.prices.table import CEILING_KEY
from policies.pricing import usd_to_micro
from tests.conftest import REDIS_URL
from tests.support import doc_prices
from tests.support.doc_prices import WORKED_EXAMPLE_USAGE
from tests.support.harness import TenantKey, gateway_settings, start_gateway
from tests.test_startup_errors import NEVER_DIALLED_DSN, run_serve, serve_env

ISSUE_EXAMPLE = Path(__file__).parent / "fixtures" / "prices" / "issue-l-example.yaml"
BUILTIN = doc_prices.VERSION

# gpt-realtime overridden at gpt-realtime-mini's documented rates, so an independent
# computation (`doc_prices.doc_cost(usage, "gpt-realtime-mini")`) gives the expected cost.
CHEAPER_GPT_REALTIME = """\
version: "acme-test-1"
models:
  gpt-realtime:
    input: "0.60"
    cached_input: "0.06"
    output: "2.40"
    audio_input: "10.00"
    cached_audio_input: "0.30"
    audio_output: "20.00"
    image_input: "0.80"
    cached_image_input: "0.08"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the issue's example ------------------------------------------------------------------------


def test_the_issue_example_adds_a_responses_model_and_overrides_gpt_live_1() -> None:
    table = load_prices(ISSUE_EXAMPLE)
    assert table.version == "acme-2026-12"
    assert table.responses_price_for("gpt-5.5") == (TokenPrice(1_250_000, 125_000, 10_000_000), "gpt-5.5")
    assert table.duration_price_for("gpt-live-1") == (DurationPrice(50_000, 20_000), "gpt-live-1")
    # The file's models carry its version; every other model keeps the built-in table's.
    assert (table.version_for("gpt-5.5"), table.version_for("gpt-live-1")) == ("acme-2026-12", "acme-2026-12")
    assert (table.version_for("gpt-realtime"), table.version_for("gpt-live-1.1")) == (BUILTIN, BUILTIN)
    assert table.version_for(CEILING_KEY) == "acme-2026-12+ceiling"
    assert table.models == DEFAULT_PRICE_TABLE.models and table.unknown_models == "refuse"


def test_without_a_price_file_the_built_in_table_is_used() -> None:
    assert load_prices(None) is DEFAULT_PRICE_TABLE
    assert Settings.from_env({}).pricing == PricingSettings(price_file=None)
    assert Settings.from_env({"VOXGATE_PRICE_FILE": str(ISSUE_EXAMPLE)}).pricing.price_file == ISSUE_EXAMPLE


# -- overrides and the version on the rows -------------------------------------------------------


def test_an_override_prices_the_model_and_stamps_the_files_version(tmp_path: Path) -> None:
    table = load_prices(write(tmp_path, CHEAPER_GPT_REALTIME))
    response = {"id": "resp_1", "status": "completed", "usage": WORKED_EXAMPLE_USAGE}
    priced = usage_record(response, session_id="vgs_1", tenant_id="ten_1", model="gpt-realtime", prices=table, now=0)
    assert priced is not None
    record, _ = priced
    # 55 x 600_000 + 64 x 60_000 + 13 x 10_000_000 + 30 x 2_400_000 + 91 x 20_000_000 = 2_058_840_000 -> 2_059
    assert (record.cost_micro_usd, record.price_version) == (2_059, "acme-test-1")
    other = usage_record(response, session_id="vgs_1", tenant_id="ten_1", model="gpt-realtime-2", prices=table, now=0)
    assert other is not None and other[0].price_version == BUILTIN


def test_the_file_wins_per_model_whatever_the_basis(tmp_path: Path) -> None:
    # gpt-realtime-whisper is per-minute in the built-in table; the file prices it by the token.
    path = write(
        tmp_path,
        'version: "v2"\nmodels:\n  gpt-realtime-whisper: {input: "1.00", audio_input: "2.00", output: "3.00"}\n',
    )
    table = load_prices(path)
    assert "gpt-realtime-whisper" not in table.durations
    assert table.transcription_price_for("gpt-realtime-whisper") == (
        TranscriptionPrice(text_in=1_000_000, audio_in=2_000_000, text_out=3_000_000),
        "gpt-realtime-whisper",
    )
    event = {"item_id": "i1", "usage": {"type": "tokens", "input_tokens": 17, "output_tokens": 9}}
    record = transcription_record(
        event, session_id="vgs_1", tenant_id="ten_1", model="gpt-realtime-whisper", prices=table, now=0
    )
    # 17 audio tokens x 2_000_000 + 9 x 3_000_000 = 61_000_000 -> 61 micro-USD
    assert record is not None and (record.cost_micro_usd, record.price_version) == (61, "v2")


def test_a_transcription_model_may_have_token_and_per_minute_rates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'version: "v3"\nmodels:\n  asr-x: {input: "1.00", audio_input: "2.00", output: "3.00", per_minute: "0.01"}\n',
    )
    price, key = load_prices(path).transcription_price_for("asr-x")
    assert key == "asr-x" and price == TranscriptionPrice(1_000_000, 2_000_000, 3_000_000, per_minute=10_000)


def test_a_realtime_model_the_file_adds_is_admitted(tmp_path: Path) -> None:
    text = CHEAPER_GPT_REALTIME.replace("  gpt-realtime:", "  gpt-realtime-acme:")
    table = load_prices(write(tmp_path, text))
    assert isinstance(decide_admission(UNRESTRICTED, "gpt-realtime-acme", AdmissionSnapshot(), 0.0, table), Admit)
    assert table.price_for("gpt-realtime-acme") == (
        DEFAULT_PRICE_TABLE.models["gpt-realtime-mini"],
        "gpt-realtime-acme",
    )


def test_the_file_can_let_unknown_models_in_at_the_ceiling(tmp_path: Path) -> None:
    table = load_prices(write(tmp_path, 'version: "v4"\nunknown_models: ceiling\nmodels: {}\n'))
    assert table.unknown_models == "ceiling" and table.admits("gpt-realtime-9")
    assert table.price_for("gpt-realtime-9") == (DEFAULT_PRICE_TABLE.ceiling, CEILING_KEY)
    assert table.version_for(CEILING_KEY) == "v4+ceiling"
    assert table.version_for("gpt-realtime") == BUILTIN


def test_the_built_in_table_round_trips_through_the_file_form(tmp_path: Path) -> None:
    data = dump_price_sheet(DEFAULT_PRICE_TABLE)
    assert data["models"]["gpt-realtime"]["audio_output"] == "64.00"  # type: ignore[index]
    assert data["models"]["gpt-live-1.1"] == {"per_minute": "0.05", "standby_per_minute": "0.02"}  # type: ignore[index]
    assert data["models"]["whisper-1"] == {"per_minute": "0.006"}  # type: ignore[index]
    path = write(tmp_path, yaml.safe_dump(data, sort_keys=False))
    assert load_prices(path) == DEFAULT_PRICE_TABLE


# -- refused files -------------------------------------------------------------------------------

LIVE = 'version: "v"\nmodels:\n  gpt-live-1:\n'


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (LIVE + "    per_minute: 0.05\n", ["models.gpt-live-1.per_minute", "float", 'quote it as a string ("0.05")']),
        (LIVE + '    per_minute: "-0.05"\n', ["models.gpt-live-1.per_minute", "not a non-negative decimal"]),
        (LIVE + "    per_minute: -1\n", ["models.gpt-live-1.per_minute", "must not be negative"]),
        (LIVE + '    per_minute: "cheap"\n', ["models.gpt-live-1.per_minute", "'cheap'"]),
        (LIVE + '    per_minute: "1e-3"\n', ["models.gpt-live-1.per_minute"]),
        (LIVE + '    per_minute: "0.0000001"\n', ["models.gpt-live-1.per_minute", "finer than one micro-USD"]),
        (LIVE + "    per_minute: true\n", ["models.gpt-live-1.per_minute"]),
        (LIVE + '    per_second: "0.001"\n', ["models.gpt-live-1.per_second: unknown key"]),
        (LIVE + '    standby_per_minute: "0.02"\n', ["models.gpt-live-1: per_minute required"]),
        (LIVE + "    {}\n", ["models.gpt-live-1: no rates given"]),
        (LIVE + '    per_minute: "0.05"\n    audio_output: "1.00"\n', ["models.gpt-live-1", "different kinds"]),
        ('version: "v"\nmodels:\n  gpt-live-1: "0.05"\n', ["models.gpt-live-1: expected a mapping of rates"]),
        ('version: "v"\nmodels:\n  gpt-5.5: {input: "1", output: "2"}\n', ["models.gpt-5.5: cached_input required"]),
        (
            'version: "v"\nmodels:\n  rt: {input: "1", cached_input: "1", output: "1", audio_input: "1",\n'
            '    cached_audio_input: "1", audio_output: "1", image_input: "1"}\n',
            ["models.rt: cached_image_input required for a realtime model"],
        ),
        ('version: "v"\nmodels:\n  1.5: {per_minute: "1"}\n', ["models: model names must be non-empty strings"]),
        ('version: "v"\ncurrency: EUR\nmodels: {}\n', ["currency: unknown key"]),
        ('version: "v"\nunknown_models: cheapest\nmodels: {}\n', ["unknown_models", "'cheapest'"]),
        ("models: {}\n", ["version: expected a non-empty string"]),
        ("version: 2026-12-01\nmodels: {}\n", ["version: expected a non-empty string"]),
        ('version: ""\nmodels: {}\n', ["version"]),
        ('version: "v1+ceiling"\nmodels: {}\n', ["version: must not end with '+ceiling'"]),
        ('version: "v"\n', ["models: expected a mapping"]),
        ('version: "v"\nmodels: []\n', ["models: expected a mapping"]),
        ("- version\n", ["expected a mapping with version and models"]),
        ("", ["expected a mapping with version and models"]),
        (LIVE + '    per_minute: "0.05"\n  gpt-live-1:\n    per_minute: "0.04"\n', ["not valid YAML", "given twice"]),
        ('version: "v"\nmodels: [\n', ["not valid YAML"]),
    ],
)
def test_a_bad_price_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PriceFileError) as caught:
        read_price_sheet(path)
    message = str(caught.value)
    assert message.startswith(f"price file {path}: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_an_unreadable_price_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="cannot be read"):
        read_price_sheet(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"version: \xff\n")
    with pytest.raises(PriceFileError, match="cannot be read"):
        read_price_sheet(tmp_path / "latin1.yaml")


def test_the_app_refuses_to_build_with_a_bad_price_file(tmp_path: Path) -> None:
    settings = replace(Settings(), pricing=PricingSettings(price_file=write(tmp_path, LIVE + "    per_minute: 0.05\n")))
    with pytest.raises(SettingsError, match=r"^VOXGATE_PRICE_FILE: price file .*models\.gpt-live-1\.per_minute"):
        create_app(settings)


async def test_serve_with_a_bad_price_file_exits_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, LIVE + '    per_minute: "-0.05"\n')
    outcome = await run_serve(serve_env(NEVER_DIALLED_DSN, VOXGATE_PRICE_FILE=str(path)))
    line = outcome.refused_with("VOXGATE_PRICE_FILE", str(path), "models.gpt-live-1.per_minute")
    assert outcome.returncode == 2, line


async def test_serve_with_an_unreadable_price_file_exits_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "no-such-prices.yaml"
    outcome = await run_serve(serve_env(NEVER_DIALLED_DSN, VOXGATE_PRICE_FILE=str(path)))
    outcome.refused_with("VOXGATE_PRICE_FILE", str(path), "cannot be read")


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.e2e
async def test_an_unknown_model_is_refused_before_upstream(gateway, emulator, tenant: TenantKey) -> None:
    before = len(emulator.sessions)
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime-9", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
        ):
            pass
    assert info.value.response.status_code == 403
    error = json.loads(info.value.response.body)["error"]
    assert (error["code"], error["type"], error["param"]) == ("model_not_priced", "invalid_request_error", "model")
    assert len(emulator.sessions) == before


@pytest.mark.e2e
async def test_a_served_price_file_prices_the_ledger_row_and_stamps_its_version(
    pg_dsn: str, emulator, tenant: TenantKey, pg_pool, tmp_path: Path
) -> None:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(settings, pricing=PricingSettings(price_file=write(tmp_path, CHEAPER_GPT_REALTIME)))
    gateway = await start_gateway(settings)
    try:
        client = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret)
        try:
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
                await conn.conversation.item.create(
                    item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
                )
                await conn.response.create()
                async with asyncio.timeout(15):
                    async for event in conn:
                        assert event.type != "error", event
                        if event.type == "response.done":
                            done = event
                            break
        finally:
            await client.close()
        await gateway.settle()
    finally:
        await gateway.stop()
    usage = done.response.usage
    assert usage is not None
    row = await pg_pool.fetchrow("SELECT * FROM usage_ledger WHERE response_id = $1", done.response.id)
    assert row["model"] == "gpt-realtime" and row["price_version"] == "acme-test-1"
    # The file prices gpt-realtime at gpt-realtime-mini's documented rates.
    assert row["cost_micro_usd"] == doc_prices.doc_cost(usage.model_dump(), "gpt-realtime-mini") > 0


# -- USD amounts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("4.00", 4_000_000),
        ("0.006", 6_000),
        ("0.05", 50_000),
        ("0.034", 34_000),
        ("0.000001", 1),
        ("1.0000000", 1_000_000),
        (" 2.5 ", 2_500_000),
        (3, 3_000_000),
    ],
)
def test_usd_amounts_convert_exactly(text: object, micro: int) -> None:
    assert usd_to_micro(text, "x") == micro


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0.05, "float"),
        ("-0.05", "not a non-negative decimal"),
        (-1, "negative"),
        ("cheap", "not a non-negative decimal"),
        ("1e-3", "not a non-negative decimal"),
        ("0.0000001", "finer than one micro-USD"),
        (True, "expected a decimal string"),
        (None, "expected a decimal string"),
    ],
)
def test_usd_amounts_that_are_not_exact_are_refused(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        usd_to_micro(value, "models.gpt-live-1.per_minute")
    assert str(caught.value).startswith("models.gpt-live-1.per_minute: ")
