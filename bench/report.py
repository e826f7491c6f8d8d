"""The results table and its JSON: one row per scenario, gateway rows compared with direct ones."""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024


def per_request_ms(cpu_s: float, completed: int) -> float | None:
    return round(cpu_s * 1000 / completed, 3) if completed else None


def added(gateway: dict[str, Any] | None, direct: dict[str, Any] | None, pick: str) -> float | None:
    """gateway[pick] - direct[pick] (milliseconds), None where either is missing."""
    if not gateway or not direct or gateway.get(pick) is None or direct.get(pick) is None:
        return None
    return round(gateway[pick] - direct[pick], 3)


def derive(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Added latency and time to first content of the gateway over the direct baseline."""
    out = {}
    for kind in ("nonstream", "stream"):
        gateway, direct = phases.get(f"gateway_{kind}"), phases.get(f"direct_{kind}")
        if gateway is None or direct is None:
            continue
        row: dict[str, float | None] = {
            "added_p50_ms": added(gateway["latency_ms"], direct["latency_ms"], "p50"),
            "added_p99_ms": added(gateway["latency_ms"], direct["latency_ms"], "p99")}
        if kind == "stream":
            for pick in ("p50", "p99"):
                row[f"added_first_content_{pick}_ms"] = added(gateway["first_content_ms"],
                                                              direct["first_content_ms"], pick)
        out[kind] = row
    return out


def _cell(value: Any, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    else:
        text = str(value)
    return text.rjust(width)


COLUMNS = [("scenario", 18), ("RPS", 8), ("p50 ms", 8), ("p99 ms", 8), ("+p50", 7), ("+p99", 7),
           ("TTFT p50", 9), ("TTFT p99", 9), ("+TTFT50", 8), ("+TTFT99", 8), ("errors", 7),
           ("gw CPU ms/req", 14), ("envoy ms/req", 13)]


def table(results: dict[str, Any]) -> str:
    """The human-readable report: the table, then CPU and memory details."""
    phases, derived = results["phases"], results["derived"]
    header = [name.rjust(width) if i else name.ljust(width) for i, (name, width) in enumerate(COLUMNS)]
    lines = ["  ".join(header)]
    lines.append("-" * len(lines[0]))
    for name in ("direct_nonstream", "gateway_nonstream", "direct_stream", "gateway_stream"):
        phase = phases.get(name)
        if phase is None:
            continue
        kind = "stream" if phase["stream"] else "nonstream"
        extra = derived.get(kind, {}) if phase["target"] == "gateway" else {}
        first = phase.get("first_content_ms") or {}
        gateway = phase["target"] == "gateway"
        values = [phase["rps"], phase["latency_ms"]["p50"], phase["latency_ms"]["p99"],
                  extra.get("added_p50_ms"), extra.get("added_p99_ms"), first.get("p50"), first.get("p99"),
                  extra.get("added_first_content_p50_ms"), extra.get("added_first_content_p99_ms"),
                  phase["errors"], phase["gateway_cpu_ms_per_req"] if gateway else None,
                  phase["envoy_cpu_ms_per_req"] if gateway else None]
        widths = [width for _, width in COLUMNS[1:]]
        cells = [name.ljust(COLUMNS[0][1])] + [_cell(v, w) for v, w in zip(values, widths, strict=True)]
        lines.append("  ".join(cells))
    lines.append("")
    lines.append("+p50/+p99/+TTFT: gateway minus direct, ms. TTFT: time to the first SSE chunk with content. "
                 "gw CPU: every worker + Envoy.")
    lines += _details(results)
    return "\n".join(lines)


def _details(results: dict[str, Any]) -> list[str]:
    lines = ["", "CPU ms per request by process group (stores = PostgreSQL + Valkey + NATS, not in gw CPU):"]
    for name, phase in results["phases"].items():
        split = "/".join(f"{v * 100:.0f}%" for v in phase["worker_cpu_share"].values()
                         if v is not None and phase["target"] == "gateway")
        kinds = f" {phase['error_kinds']}" if phase["errors"] else ""
        lines.append(f"  {name}: workers {_ms(phase['workers_cpu_ms_per_req'])} (split {split or '-'}), "
                     f"envoy {_ms(phase['envoy_cpu_ms_per_req'])}, "
                     f"stores {_ms(phase['stores_cpu_ms_per_req'])}, "
                     f"upstream {_ms(phase['upstream_cpu_ms_per_req'])}, "
                     f"client {_ms(phase['client_cpu_ms_per_req'])}; "
                     f"machine busy {phase['machine_busy'] * 100:.0f}% "
                     f"(other processes {phase['machine_busy_others'] * 100:.0f}%); "
                     f"ok {phase['ok']}, errors {phase['errors']}{kinds}")
    transit = {name: phase.get("chunk_transit_ms") for name, phase in results["phases"].items()}
    if transit.get("gateway_stream") and transit.get("direct_stream"):
        gateway, direct = transit["gateway_stream"], transit["direct_stream"]
        lines.append(f"Chunk transit, upstream write to client read (content chunks, ms): direct p50 "
                     f"{_ms(direct['p50'])} p99 {_ms(direct['p99'])}; gateway p50 {_ms(gateway['p50'])} "
                     f"p99 {_ms(gateway['p99'])}; added p50 {_ms(_minus(gateway['p50'], direct['p50']))} "
                     f"p99 {_ms(_minus(gateway['p99'], direct['p99']))}")
    lines.append("Valkey per request (commands, and the microseconds Valkey spent executing them):")
    for name, phase in results["phases"].items():
        valkey = phase.get("valkey")
        if phase["target"] == "gateway" and valkey:
            top = ", ".join(f"{cmd} {calls:g}x {usec:.1f} us" for cmd, (calls, usec) in valkey["top"].items())
            lines.append(f"  {name}: {valkey['commands_per_req']:g} commands, "
                         f"{valkey['usec_per_req']:.1f} us ({top})")
    for name, phase in results["phases"].items():
        shares = [v for v in phase["worker_cpu_share"].values() if v is not None]
        if phase["target"] == "gateway" and len(shares) > 1 and max(shares) > 0.8:
            lines.append(f"  note: in {name} one worker did {max(shares) * 100:.0f}% of the workers' work "
                         "(SO_REUSEPORT spreads Envoy's few HTTP/2 connections, not requests; "
                         "see --ports distinct)")
    rss = results["peak_rss"]
    shown = ", ".join(f"{name} {value / MIB:.0f}" for name, value in rss["per_process"].items() if value)
    lines.append(f"peak RSS MiB: {shown}; gateway total {rss['gateway_total'] / MIB:.0f}")
    return lines


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
