"""The collectives of a compiled XLA program, counted from its HLO text, per step.

`jax.jit(f).lower(...).compile().as_text()` is the program after SPMD
partitioning: every all-reduce, all-gather, reduce-scatter, all-to-all and
collective-permute that the devices will run is an instruction in it. A
collective inside a while loop's body (the scanned layer) runs once per
iteration; this module finds the loops, their trip counts (the constant the
loop condition compares against), and multiplies, so that the counts and bytes
are per training step and a per-layer collective stands out.
"""

import collections
import dataclasses
import math
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {
  "pred": 1,
  "s4": 0.5,
  "u4": 0.5,
  "s8": 1,
  "u8": 1,
  "bf16": 2,
  "f16": 2,
  "s16": 2,
  "u16": 2,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "f64": 8,
  "s64": 8,
  "u64": 8,
  "c64": 8,
  "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z0-9]*)?)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([^\s(]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (.*?) ([a-z][a-z0-9-]*)\((.*)$")
_CALLEES = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%([^\s,)}]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_CONSTANT = re.compile(r"^\s*%\S+ = s32\[\]\S* constant\((\d+)\)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective instruction of the compiled program."""

  kind: str  # one of KINDS
  name: str  # the HLO instruction name
  bytes: float  # the full buffer it moves or reduces (all-gather: output; reduce-scatter: input), per execution
  group_size: int  # devices in one replica group (0 when the HLO does not say)
  in_loop: bool  # inside a while loop's body (the scanned layers)
  executions: int  # times it runs per step: the product of the trip counts of the loops around it
  shape: str  # its result type, for reading


def _array_bytes(type_text: str) -> float:
  total = 0.0
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype in _DTYPE_BYTES or dtype.startswith("f8"):
      total += _DTYPE_BYTES.get(dtype, 1) * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _top_level_elements(type_text: str) -> list[str]:
  """`(a, (b, c), d)` → ['a', '(b, c)', 'd']; a non-tuple type is its own single element."""
  text = re.sub(r"/\*.*?\*/", "", type_text).strip()
  if not text.startswith("("):
    return [text]
  elements, depth, start = [], 0, 1
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if (ch == "," and depth == 1) or (depth == 0 and ch == ")"):
      elements.append(text[start:i])
      start = i + 1
  return [e.strip() for e in elements if e.strip()] or [text]


def _readable(type_text: str, limit: int = 100) -> str:
  text = re.sub(r"/\*.*?\*/|\{[^{}]*\}", "", type_text)
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _group_size(attributes: str) -> int:
  """Devices per replica group, from any of the three HLO spellings of `replica_groups`."""
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", attributes)
  if mesh:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", mesh.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", mesh.group(2)))
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=", attributes)
  if iota:
    return int(iota.group(1).split(",")[-1])
  listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
  if listed:
    return len([d for d in listed.group(1).split(",") if d])
  return 0


def _moved_bytes(kind: str, op: str, result_type: str, group: int) -> float:
  elements = _top_level_elements(result_type)
  if op.endswith("-start") and kind != "all-reduce" and len(elements) >= 2:
    result_type = elements[1]  # async start: (operands, outputs, context...)
  size = _array_bytes(result_type)
  return size * group if kind == "reduce-scatter" else size


def _parse(hlo_text: str):
  """Computations → their instruction lines, the entry's name, and the call edges."""
  bodies, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(1)
      bodies[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif current is not None and line.strip() == "}":
      current = None
    elif current is not None:
      bodies[current].append(line)
  return bodies, entry


def _trip_count(line: str, bodies) -> int:
  known = _TRIP_COUNT.search(line)
  if known:
    return int(known.group(1))
  condition = re.search(r"condition=%([^\s,]+)", line)
  constants = {
    int(c) for text in bodies.get(condition.group(1) if condition else "", []) for c in _CONSTANT.findall(text)
  }
  return constants.pop() if len(constants) == 1 else 1


def _executions(bodies, entry) -> tuple[dict[str, int], set[str]]:
  """How often each computation runs per call of the entry, and which run inside a loop body."""
  runs, in_loop = collections.Counter({entry: 1}), set()
  stack = [(entry, 1, False)]
  while stack:
    name, times, looped = stack.pop()
    for line in bodies.get(name, []):
      callees = _CALLEES.findall(line)
      for branches in _BRANCHES.findall(line):
        callees += [("branch", b.strip().lstrip("%")) for b in branches.split(",")]
      trip = _trip_count(line, bodies) if " while(" in line else 1
      for role, callee in callees:
        if role == "to_apply" or callee not in bodies:
          continue  # reductions of all-reduce, sort comparators: no collectives
        child_times = times * (trip if role in ("body", "condition") else 1)
        child_looped = looped or role == "body"
        runs[callee] += child_times
        if child_looped:
          in_loop.add(callee)
        stack.append((callee, child_times, child_looped))
  return runs, in_loop


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective of a compiled (post-SPMD) HLO module, with how often it runs per step."""
  bodies, entry = _parse(hlo_text)
  if entry is None:
    raise ValueError("No ENTRY computation in the HLO text; pass `compiled.as_text()` of a compiled program.")
  runs, in_loop = _executions(bodies, entry)
  found = []
  for computation, lines in bodies.items():
    if not runs.get(computation):
      continue
    for line in lines:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      name, result_type, op, rest = match.groups()
      kind = op.removesuffix("-start")
      if kind not in KINDS or op.endswith("-done"):
        continue
      group = _group_size(rest)
      found.append(
        Collective(
          kind,
          name,
          _moved_bytes(kind, op, result_type, group),
          group,
          computation in in_loop,
          runs[computation],
          _readable(result_type),
        )
      )
  return found


def summarize(found: list[Collective]) -> dict[str, dict[str, dict[str, float]]]:
  """{'outside_loop' | 'inside_loop': {kind: {'instructions', 'per_step', 'bytes_per_step'}}}."""
  table = {
    where: {k: {"instructions": 0, "per_step": 0, "bytes_per_step": 0.0} for k in KINDS}
    for where in ("outside_loop", "inside_loop")
  }
  for c in found:
    row = table["inside_loop" if c.in_loop else "outside_loop"][c.kind]
    row["instructions"] += 1
    row["per_step"] += c.executions
    row["bytes_per_step"] += c.bytes * c.executions
  return table
