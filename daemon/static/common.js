// Helpers shared by the status page and the graph view. Data only ever reaches the DOM as text (textContent),
// never as HTML: labels, ids and property values come from the replicated graph.
"use strict";

const GR = {
  // An element with optional class and text; children appended in order.
  el(tag, cls, text, ...children) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const child of children) node.appendChild(child);
    return node;
  },

  // Replace the rows of a table body.
  fillBody(tbody, rows) {
    tbody.replaceChildren(...rows);
  },

  row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      tr.appendChild(cell instanceof Node ? cell : GR.el("td", null, cell));
    }
    return tr;
  },

  // A value as a person reads it: strings as they are, everything else as JSON.
  show(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  },

  duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.max(0, seconds);
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${Math.round(s / 86400)} d`;
  },

  async getJSON(url) {
    const response = await fetch(url, { cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      throw new Error(`${url}: HTTP ${response.status}, not JSON`);
    }
    return { ok: response.ok, status: response.status, body };
  },
};
