"""web/js/protocol.js, the browser's copy of the wire protocol, agrees with server/protocol.py.

Node (no browser) imports the module and prints what it exports as JSON; the
tests compare that with `server.protocol.browser_constants()` and the Python
NaN/±Infinity codec. A last test keeps copies of the protocol out of the other
dashboard modules, so protocol.js stays the only one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from server import protocol

ROOT = Path(__file__).resolve().parent.parent
WEB_JS = ROOT / "web" / "js"

# Exported by protocol.js besides the constants of browser_constants().
EXTRA_EXPORTS = {"RUN_ID", "decodeNumber", "encodeNumber"}

# Prints every export as JSON: RegExps as {"regexp": source, "flags": …}, functions
# as {"function": name}, plus the names of the exports that are frozen objects.
EXPORTS_SCRIPT = """
const p = await import(process.env.PROTOCOL_MODULE);
const exports = {};
const frozen = [];
for (const [name, value] of Object.entries(p)) {
  if (value instanceof RegExp) exports[name] = { regexp: value.source, flags: value.flags };
  else if (typeof value === "function") exports[name] = { function: value.name };
  else exports[name] = value;
  if (typeof value === "object" && value !== null && Object.isFrozen(value)) frozen.push(name);
}
console.log(JSON.stringify({ exports, frozen }));
"""

# Decodes WIRE, encodes NUMBERS and tests RUN_ID on SAMPLES. JSON has no NaN: a
# decoded number is written as {"number": String(x)}.
CODEC_SCRIPT = """
const { decodeNumber, encodeNumber, RUN_ID } = await import(process.env.PROTOCOL_MODULE);
const input = JSON.parse(process.env.CASES);
const show = (x) => (typeof x === "number" ? { number: String(x) } : x);
const numbers = input.numbers.map(Number);  // "NaN", "Infinity", "-Infinity", "1.5" → numbers
console.log(JSON.stringify({
  decoded: input.wire.map((w) => show(decodeNumber(w))),
  encoded: numbers.map(encodeNumber),
  roundTrip: numbers.map((x) => Object.is(decodeNumber(encodeNumber(x)), x)),
  encodedNull: encodeNumber(null),
  decodedNull: decodeNumber(null),
  runIds: input.samples.map((s) => RUN_ID.test(s)),
}));
"""

NUMBERS = ["NaN", "Infinity", "-Infinity", "0", "1.5", "-2.5e-8", "1e308", "-7"]
WIRE: list[Any] = ["NaN", "Infinity", "-Infinity", 0, 1.5, -3, None, True, "nan", "1.5", [], {}]
RUN_ID_SAMPLES = [
    "0123456789abcdef0123456789abcdef",
    "0123456789ABCDEF0123456789ABCDEF",
    "0123456789abcdef0123456789abcde",
    "0123456789abcdef0123456789abcdef0",
    "0123456789abcdef0123456789abcdef\n",
    " 0123456789abcdef0123456789abcdef",
    "g123456789abcdef0123456789abcdef",
    "",
]

# Literal copies of the protocol that belong in protocol.js only.
COPIES = ["[0-9a-f]{32}", '"-Infinity"', "'-Infinity'", "1008", "1013", '"learning_rate"']


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is needed to check web/js/protocol.js against server/protocol.py")
        pytest.skip("node is not installed: web/js/protocol.js is not checked")
    return path


@pytest.fixture(scope="module")
def module_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    # .mjs: Node reads it as an ES module whatever its version guesses for .js.
    copy = tmp_path_factory.mktemp("protocol_js") / "protocol.mjs"
    shutil.copy(WEB_JS / "protocol.js", copy)
    return copy.as_uri()


def run_node(node: str, module_url: str, script: str, **env: str) -> Any:
    result = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PROTOCOL_MODULE": module_url, **env},
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_constants_equal_server_protocol(node: str, module_url: str) -> None:
    out = run_node(node, module_url, EXPORTS_SCRIPT)
    exports: dict[str, Any] = out["exports"]
    expected = protocol.browser_constants()

    missing_in_js = set(expected) - set(exports)
    unknown_in_js = set(exports) - set(expected) - EXTRA_EXPORTS
    assert not missing_in_js, f"protocol.js lacks {sorted(missing_in_js)}"
    assert not unknown_in_js, (
        f"protocol.js exports what server/protocol.py does not: {unknown_in_js}"
    )
    assert set(exports) >= EXTRA_EXPORTS, f"protocol.js lacks {EXTRA_EXPORTS - set(exports)}"
    assert {name: exports[name] for name in expected} == expected

    assert exports["RUN_ID"] == {"regexp": f"^{protocol.RUN_ID_PATTERN}$", "flags": ""}
    assert exports["decodeNumber"] == {"function": "decodeNumber"}
    assert exports["encodeNumber"] == {"function": "encodeNumber"}
    objects = {name for name, value in expected.items() if isinstance(value, (list, dict))}
    assert objects <= set(out["frozen"]), f"not frozen: {objects - set(out['frozen'])}"


def shown(value: float | None) -> Any:
    """A decoded number as the Node script prints it: {"number": String(x)}, or null."""
    if value is None:
        return None
    if not math.isfinite(value):
        return {"number": protocol.encode_number(value)}
    return {"number": str(int(value)) if value.is_integer() else repr(value)}


def test_codec_matches_server_protocol(node: str, module_url: str) -> None:
    cases = {"numbers": NUMBERS, "wire": WIRE, "samples": RUN_ID_SAMPLES}
    out = run_node(node, module_url, CODEC_SCRIPT, CASES=json.dumps(cases))

    numbers = [float(n) for n in NUMBERS]
    assert out["encoded"] == [protocol.encode_number(x) for x in numbers]
    assert out["roundTrip"] == [True] * len(numbers)
    assert out["decoded"] == [shown(protocol.decode_number(w)) for w in WIRE]
    # null is "no value" in the browser: it stays null both ways (the server
    # writes None as "NaN" because SQLite keeps NaN as NULL).
    assert out["encodedNull"] is None and out["decodedNull"] is None
    assert out["runIds"] == [bool(protocol.RUN_ID.fullmatch(s)) for s in RUN_ID_SAMPLES]


def test_no_copy_of_the_protocol_outside_protocol_js() -> None:
    found = []
    for path in sorted(WEB_JS.glob("*.js")):
        if path.name == "protocol.js":
            continue
        text = path.read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), 1):
            found += [f"{path.name}:{n}: {copy}" for copy in COPIES if copy in line]
    assert not found, "import these from protocol.js instead:\n" + "\n".join(found)
