// The status page: reads /status and /status/history every few seconds and draws them.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let refreshes = 0;
  let sinksShown = "";

  function positionCell(position) {
    const td = GR.el("td", "mono");
    if (position === null || position === undefined) {
      td.textContent = "none yet";
    } else if (Array.isArray(position)) {
      td.textContent = position.join(" / ");
    } else {
      const names = Object.keys(position);
      for (const name of names.slice(0, 4)) {
        const at = position[name];
        td.appendChild(GR.el("div", null, `${name || "(stream)"}: ${Array.isArray(at) ? at.join(" / ") : GR.show(at)}`));
      }
      if (names.length > 4) td.appendChild(GR.el("div", "muted", `+${names.length - 4} more partitions`));
    }
    return td;
  }

  // An SVG polyline of the lag samples (scaled to the largest), with the span and the peak as a tooltip.
  function sparkline(samples) {
    const td = GR.el("td", "spark");
    if (!samples || samples.length < 2) {
      td.appendChild(GR.el("span", "muted", "collecting…"));
      return td;
    }
    const w = 160, h = 30, pad = 2;
    const t0 = samples[0][0], t1 = samples[samples.length - 1][0];
    const top = Math.max(...samples.map((s) => s[1]));
    const peak = Math.max(1, top); // the scale: a lag under 1 s stays near the baseline
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("class", "sparkline");
    const points = samples.map((s) => {
      const x = pad + ((s[0] - t0) / Math.max(1e-9, t1 - t0)) * (w - 2 * pad);
      const y = h - pad - (s[1] / peak) * (h - 2 * pad);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `last ${GR.duration(t1 - t0)}: peak lag ${GR.duration(top)}`;
    svg.appendChild(title);
    td.appendChild(svg);
    td.appendChild(GR.el("span", "spark-peak", top > 0 ? `peak ${GR.duration(top)}` : "no lag"));
    return td;
  }

  function stateCell(source) {
    const classes = { polling: "ok", reading: "ok", caught_up: "ok", standby: "muted", starting: "muted" };
    const cls = source.error ? "bad" : classes[source.state] || "bad";
    return GR.el("td", `state ${cls}`, source.state);
  }

  function noteFor(source) {
    if (source.error) return `stopped: ${source.error}`;
    if (source.restarting_after) return `restarting after: ${source.restarting_after}`;
    if (!source.sink_healthy) return source.sink === null ? "event sink failing" : "sink failing";
    return "";
  }

  function drawSources(status, history) {
    const series = (history && history.sources) || {};
    const rows = status.sources.map((source) => {
      const tr = GR.row([
        GR.el("td", "name", source.source),
        stateCell(source),
        positionCell(source.position),
        GR.el("td", source.caught_up ? "ok" : "", source.caught_up ? "caught up" : GR.duration(source.lag_seconds)),
        sparkline(series[source.source]),
        GR.el("td", "num", Number(source.changes_applied || 0).toLocaleString("en")),
        GR.el("td", source.sink_healthy ? "" : "bad", source.sink === null ? "(event sinks only)" : source.sink),
        GR.el("td", "mono", source.owner_id === undefined ? "–" : GR.show(source.owner_id)),
        GR.el("td", "note", noteFor(source)),
      ]);
      tr.dataset.source = source.source;
      return tr;
    });
    GR.fillBody($("sources").tBodies[0], rows);
    const spans = Object.values(series).filter((s) => s.length > 1).map((s) => s[s.length - 1][0] - s[0][0]);
    $("spark-head").textContent = spans.length ? `lag, last ${GR.duration(Math.max(...spans))}` : "lag, last minutes";
  }

  // Leases are drawn when the status has them (the DynamoDB checkpoint store): one row a partition.
  function drawLeases(status) {
    const leases = [];
    for (const source of status.sources) {
      for (const lease of source.leases || []) leases.push([source.source, lease]);
    }
    $("leases-section").hidden = leases.length === 0;
    if (!leases.length) return;
    const keys = [];
    for (const [, lease] of leases) {
      for (const key of Object.keys(lease)) if (!keys.includes(key)) keys.push(key);
    }
    const head = GR.row([GR.el("th", null, "source"), ...keys.map((k) => GR.el("th", null, k))]);
    $("leases").tHead.replaceChildren(head);
    const rows = leases.map(([name, lease]) =>
      GR.row([GR.el("td", "name", name), ...keys.map((k) => GR.el("td", "mono", GR.show(lease[k])))]),
    );
    GR.fillBody($("leases").tBodies[0], rows);
  }

  // Event sinks are drawn when a source fans out (docs/events.md): one row each, with its own checkpoint.
  function drawEventSinks(status) {
    const lanes = [];
    for (const source of status.sources) {
      for (const lane of source.event_sinks || []) lanes.push([source.source, lane]);
    }
    $("event-sinks-section").hidden = lanes.length === 0;
    const count = (n) => GR.el("td", "num", Number(n || 0).toLocaleString("en"));
    const states = { ok: "ok", retrying: "warn", down: "bad" };
    const rows = lanes.map(([name, lane]) => {
      const buffered = `${Number(lane.buffered_events || 0).toLocaleString("en")} (${lane.buffered_batches} batches)`;
      const tr = GR.row([
        GR.el("td", "name", name),
        GR.el("td", "name", lane.sink),
        GR.el("td", null, lane.kind),
        GR.el("td", `state ${states[lane.state] || "bad"}`, lane.state),
        positionCell(lane.position && Object.keys(lane.position).length === 1 && "" in lane.position
          ? lane.position[""] : lane.position),
        GR.el("td", lane.caught_up ? "ok" : "", lane.caught_up ? "caught up" : GR.duration(lane.lag_seconds)),
        GR.el("td", "num", buffered),
        count(lane.events_sent),
        count(lane.events_retried),
        GR.el("td", lane.events_dead_lettered ? "num bad" : "num", Number(lane.events_dead_lettered || 0).toLocaleString("en")),
        GR.el("td", "note", lane.failing_reason || ""),
      ]);
      tr.dataset.eventSink = lane.checkpoint_key;
      return tr;
    });
    GR.fillBody($("event-sinks").tBodies[0], rows);
  }

  function retriesText(retries) {
    const entries = Object.entries(retries || {}).filter(([, n]) => n > 0);
    return entries.length ? entries.map(([reason, n]) => `${reason} ${n}`).join(", ") : "none";
  }

  function drawSinks(status) {
    const sinks = status.sinks || [];
    const rows = sinks.map((sink) => {
      const link = GR.el("a", null, "look");
      link.href = `/graph?sink=${encodeURIComponent(sink.sink)}`;
      const tr = GR.row([
        GR.el("td", "name", sink.sink),
        GR.el("td", null, sink.kind),
        GR.el("td", sink.healthy ? "ok" : "bad", sink.healthy ? "healthy" : `failing: ${sink.failing_reason || "?"}`),
        GR.el("td", null, retriesText(sink.retries)),
        GR.el("td", null, undefined, link),
      ]);
      tr.dataset.sink = sink.sink;
      return tr;
    });
    GR.fillBody($("sinks").tBodies[0], rows);
    const names = sinks.map((s) => s.sink).join("\n");
    if (names !== sinksShown) {
      sinksShown = names;
      $("lookup-sink").replaceChildren(...sinks.map((s) => {
        const option = GR.el("option", null, s.sink);
        option.value = s.sink;
        return option;
      }));
    }
  }

  function drawSummary(status) {
    const badge = $("readiness");
    badge.textContent = status.draining ? "draining" : status.ready ? "ready" : "not ready";
    badge.className = `badge ${status.draining ? "warn" : status.ready ? "ok" : "bad"}`;
    $("reasons").replaceChildren(...(status.reasons || []).map((r) => GR.el("li", null, r)));
    $("uptime").textContent = GR.duration(status.uptime_seconds);
    $("dead-letters").textContent = String(status.dead_letters);
    $("dead-letters").className = status.dead_letters ? "bad" : "";
    let retries = 0;
    for (const sink of status.sinks || []) for (const n of Object.values(sink.retries || {})) retries += n;
    $("retries").textContent = String(retries);
    let applied = 0;
    for (const source of status.sources) applied += source.changes_applied || 0;
    $("applied").textContent = applied.toLocaleString("en");
  }

  async function refresh() {
    try {
      const [status, history] = await Promise.all([GR.getJSON("/status"), GR.getJSON("/status/history")]);
      drawSummary(status.body);
      drawSources(status.body, history.body);
      drawLeases(status.body);
      drawEventSinks(status.body);
      drawSinks(status.body);
      $("error").hidden = true;
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      $("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
    } catch (e) {
      $("error").textContent = `cannot reach the daemon: ${e.message}`;
      $("error").hidden = false;
      $("readiness").textContent = "unreachable";
      $("readiness").className = "badge bad";
    }
  }

  $("every").textContent = String(REFRESH_MS / 1000);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
