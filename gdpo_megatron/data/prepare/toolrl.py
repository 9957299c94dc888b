"""The tool-calling mix of ToolRL (the GDPO paper's tool-calling data): ToolACE, Hammer and xLAM.

Two ways to build it:
- `--source PATH/rlla_rl.json` (recommended): ToolRL's own 4k mix, the file the paper trained on
  (github.com/qiancheng0/ToolRL, `dataset/rlla_4k_raw/rlla_rl.json`: 2k ToolACE, 1k Hammer with
  masked function names, 1k xLAM). A JSON array of {"instruction", "input", "output"}:
  `instruction` is ToolRL's system prompt with the tools listed as "N. Name: ...\nDescription:
  ...\nParameters: {json}", `input` the dialogue so far ("<user> ... </user>", earlier
  `<tool_call>`/`<response>` turns and `<obs>` tool results), `output` the reference turn
  (`<think>`, then `<tool_call>` with one {"name", "parameters"} JSON object per line and/or
  `<response>`). Records keep ToolRL's instruction as the system message, so the model sees the
  paper's prompt; every row is kept (no sampling).
- `--source hf` or `toolace=PATH,hammer=PATH,xlam=PATH`: an approximation rebuilt from the three
  upstream datasets below. ToolRL's Hammer part is function-masked data that is not published on
  the hub; MadeAgents/xlam-irrelevance-7.5k (Hammer's irrelevance set) stands in for it.

Upstream schemas of the approximation (Hugging Face dataset cards / viewer features):
- Team-ACE/ToolACE (`data.json`): `system` (text whose JSON list of tool documents follows
  "...functions in JSON format..."), `conversations` [{"from": "user"|"assistant"|"tool", "value"}];
  an assistant turn that calls tools is Python call syntax, `[name(arg=value, ...), ...]`.
- Salesforce/xlam-function-calling-60k: `id`, `query`, `answers` (JSON string: a list of
  {"name", "arguments"}), `tools` (JSON string: a list of {"name", "description", "parameters":
  {param: {"type", "description", "default"?}}}).
- MadeAgents/xlam-irrelevance-7.5k (Hammer): the xLAM schema; `answers` is "[]" when none of
  the tools fits, so the right output is a plain response.

The mix takes a fixed number of records per source (ToolRL: 2000 ToolACE, 1000 Hammer, 1000
xLAM), chosen by a seeded hash of the record id, then splits it into train and validation.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from gdpo_megatron.rewards.tool_calling import system_prompt

from .common import (Conversion, Dropped, Output, SourceError, content_id, convert_rows, read_source, split_records,
                     stable_hash)

MIX = {"toolace": 2000, "hammer": 1000, "xlam": 1000}
HUB_IDS = {"toolace": "Team-ACE/ToolACE", "hammer": "MadeAgents/xlam-irrelevance-7.5k",
           "xlam": "Salesforce/xlam-function-calling-60k"}


def _json_field(row: dict, key: str) -> Any:
    value = row.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise Dropped(f"{key!r} is not valid JSON") from None
    if value is None:
        raise Dropped(f"missing {key!r}")
    return value


def xlam_tool_schema(tool: dict) -> dict:
    """xLAM's {param: {type, description, default}} as a JSON schema object (a default makes it optional)."""
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise Dropped("a tool without a name")
    params = tool.get("parameters") or {}
    if not isinstance(params, dict):
        raise Dropped("tool parameters are not an object")
    properties = {name: {k: v for k, v in spec.items() if k != "default"} if isinstance(spec, dict) else {}
                  for name, spec in params.items()}
    required = [name for name, spec in params.items() if not (isinstance(spec, dict) and "default" in spec)]
    return {"name": tool["name"], "description": tool.get("description", ""),
            "parameters": {"type": "object", "properties": properties, "required": required}}


def tool_record(record_id: str, query: str, tools: list[dict], calls: list[dict], source: str) -> dict:
    record = {"id": record_id, "messages": [{"role": "system", "content": system_prompt(tools)},
                                            {"role": "user", "content": query}],
              "tools": tools, "tool_calls": calls, "source": source}
    if not calls:
        record["expects_response"] = True
    return record


def convert_xlam_row(row: Any, prefix: str) -> dict:
    if not isinstance(row, dict) or not str(row.get("query") or "").strip():
        raise Dropped("missing 'query'")
    tools = [xlam_tool_schema(t) for t in _json_field(row, "tools")]
    answers = _json_field(row, "answers")
    if not isinstance(answers, list):
        raise Dropped("'answers' is not a list")
    calls = []
    for answer in answers:
        if not isinstance(answer, dict) or not isinstance(answer.get("name"), str) \
                or not isinstance(answer.get("arguments", {}), dict):
            raise Dropped("an answer is not {'name', 'arguments'}")
        calls.append({"name": answer["name"], "arguments": answer.get("arguments", {})})
    record_id = f"{prefix}-{row['id']}" if row.get("id") is not None else content_id(prefix, row["query"], answers)
    return tool_record(record_id, row["query"], tools, calls, prefix)


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Name):  # ToolACE writes some bare words unquoted
            return {"true": True, "false": False, "null": None}.get(node.id.lower(), node.id)
        raise Dropped("a call argument is not a literal") from None


def parse_python_calls(text: str) -> list[dict]:
    """`[f(a=1), g(b="x")]` (ToolACE's call syntax) as [{"name", "arguments"}]."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise Dropped("assistant call list is not valid call syntax") from None
    items = tree.elts if isinstance(tree, ast.List) else [tree]
    calls = []
    for item in items:
        if not isinstance(item, ast.Call) or item.args:
            raise Dropped("assistant call list has a non-call or a positional argument")
        calls.append({"name": ast.unparse(item.func), "arguments": {k.arg: _literal(k.value) for k in item.keywords}})
    return calls


def toolace_tools(system: str) -> list[dict]:
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(system) if ch == "["):
        try:
            tools, _ = decoder.raw_decode(system[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(tools, list) and tools and all(isinstance(t, dict) and "name" in t for t in tools):
            return tools
    raise Dropped("no JSON list of tools in 'system'")


def convert_toolace_row(row: Any) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("system"), str):
        raise Dropped("missing 'system'")
    turns = row.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise Dropped("fewer than two conversation turns")
    first, reply = turns[0], turns[1]
    if first.get("from") != "user" or reply.get("from") != "assistant":
        raise Dropped("conversation does not start with a user turn and an assistant reply")
    tools = toolace_tools(row["system"])
    value = str(reply.get("value", "")).strip()
    calls = parse_python_calls(value) if value.startswith("[") and value.endswith(")]") else []
    return tool_record(content_id("toolace", first["value"], value), first["value"], tools, calls, "toolace")


_TOOL_ENTRY = re.compile(r"^\d+\. Name: (?P<name>.+)\nDescription: (?P<description>.*)\nParameters: (?P<parameters>\{.*\})$",
                         flags=re.MULTILINE)
_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", flags=re.DOTALL)


def toolrl_tools(instruction: str) -> list[dict]:
    """The tools ToolRL's instruction lists, as {name, description, parameters: JSON schema}.

    ToolRL writes each parameter as {"description", "type", "default"} with "" for no default,
    so a parameter with an empty default is the required one.
    """
    tools = []
    for match in _TOOL_ENTRY.finditer(instruction):
        try:
            params = json.loads(match["parameters"])
        except json.JSONDecodeError:
            raise Dropped("a tool's Parameters in 'instruction' are not JSON") from None
        if not isinstance(params, dict):
            raise Dropped("a tool's Parameters in 'instruction' are not an object")
        properties = {k: {f: v for f, v in spec.items() if f != "default"} if isinstance(spec, dict) else {}
                      for k, spec in params.items()}
        required = [k for k, spec in params.items() if isinstance(spec, dict) and spec.get("default", "") == ""]
        tools.append({"name": match["name"].strip(), "description": match["description"].strip(),
                      "parameters": {"type": "object", "properties": properties, "required": required}})
    if not tools and "Name:" in instruction:
        raise Dropped("the tools in 'instruction' are not in ToolRL's 'N. Name/Description/Parameters' form")
    return tools


def toolrl_calls(output: str) -> list[dict]:
    """The reference calls of a ToolRL `output`: one {"name", "parameters"} JSON object per line."""
    block = _CALL_BLOCK.search(output)
    if block is None:
        return []
    calls = []
    for line in (line.strip() for line in block.group(1).splitlines()):
        if not line:
            continue
        try:
            call = json.loads(line)
        except json.JSONDecodeError:
            raise Dropped("a reference call line in 'output' is not JSON") from None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) \
                or not isinstance(call.get("parameters", {}), dict):
            raise Dropped("a reference call in 'output' is not {'name', 'parameters': object}")
        calls.append({"name": call["name"], "arguments": call.get("parameters", {})})
    if not calls:
        raise Dropped("an empty <tool_call> block in 'output'")
    return calls


def convert_toolrl_row(row: Any) -> dict:
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("instruction", "input", "output")):
        raise Dropped("missing 'instruction', 'input' or 'output'")
    if "<user>" not in row["input"]:
        raise Dropped("'input' has no <user> turn")
    calls = toolrl_calls(row["output"])
    record = {"id": content_id("toolrl", row["instruction"], row["input"], row["output"]),
              "messages": [{"role": "system", "content": row["instruction"]}, {"role": "user", "content": row["input"]}],
              "tools": toolrl_tools(row["instruction"]), "tool_calls": calls, "source": "toolrl-4k"}
    if "<response>" in row["output"] or not calls:
        record["expects_response"] = True
    return record


def convert_toolrl_file(source: str, val_fraction: float, seed: int) -> Conversion:
    result = Conversion(outputs=[], sources=[{"name": "qiancheng0/ToolRL dataset/rlla_4k_raw/rlla_rl.json",
                                              "source": source}])
    rows = read_source(source, "ToolRL's dataset/rlla_4k_raw/rlla_rl.json", "train", None)
    records = convert_rows(rows, lambda row, where: convert_toolrl_row(row), "tool_calling", result)
    train, val = split_records(records, val_fraction, seed)
    result.outputs = [Output("train.jsonl", "train", train), Output("val.jsonl", "validation", val)]
    return result


def _convert_source(name: str, source: str, result: Conversion) -> list[dict]:
    hub_id = HUB_IDS[name]
    rows = list(read_source(source, hub_id, "train", None))
    if name == "toolace":
        return convert_rows(rows, lambda row, where: convert_toolace_row(row), "tool_calling", result)
    return convert_rows(rows, lambda row, where: convert_xlam_row(row, name), "tool_calling", result)


def parse_sources(source: str) -> dict[str, str]:
    """`hf`, or `toolace=PATH,hammer=PATH,xlam=PATH` (each a local copy)."""
    if source == "hf":
        return {name: "hf" for name in MIX}
    parts = dict(item.split("=", 1) for item in source.split(",") if "=" in item)
    missing = [name for name in MIX if name not in parts]
    if missing or len(parts) != len(source.split(",")):
        raise SourceError(f"toolrl: --source must be ToolRL's rlla_rl.json, 'hf' or "
                          f"'toolace=PATH,hammer=PATH,xlam=PATH' (missing: {', '.join(missing) or 'none'})")
    return parts


def convert(source: str, val_fraction: float, seed: int, mix: dict[str, int] | None = None) -> Conversion:
    if source != "hf" and "=" not in source:
        return convert_toolrl_file(source, val_fraction, seed)
    mix = dict(MIX if mix is None else mix)
    paths = parse_sources(source)
    result = Conversion(outputs=[], sources=[{"name": HUB_IDS[n], "source": paths[n], "take": mix[n]} for n in mix])
    chosen: list[dict] = []
    for name, take in mix.items():
        records = _convert_source(name, paths[name], result)
        records.sort(key=lambda r: stable_hash(f"{seed}:{r['id']}"))
        chosen += records[:take]
        result.sources[list(mix).index(name)]["available"] = len(records)
    train, val = split_records(chosen, val_fraction, seed)
    result.outputs = [Output("train.jsonl", "train", train), Output("val.jsonl", "validation", val)]
    return result
