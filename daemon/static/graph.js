// The graph view: reads /graph/data for the vertex named in the page's query string and draws its
// neighbourhood with cytoscape.js. Cytoscape draws labels on a canvas; the details panel uses textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f"];
  const colours = new Map();
  let cy = null;

  function colourOf(label) {
    if (!colours.has(label)) colours.set(label, PALETTE[colours.size % PALETTE.length]);
    return colours.get(label);
  }

  function message(text, cls) {
    $("message").textContent = text;
    $("message").className = `message ${cls || ""}`;
  }

  function caption(node) {
    const props = node.properties || {};
    for (const key of ["name", "title", "label"]) {
      if (typeof props[key] === "string" && props[key]) return `${props[key]}`;
    }
    return String(node.id);
  }

  function short(text, n) {
    return text.length > n ? `${text.slice(0, n - 1)}…` : text;
  }

  function showDetails(kind, title, props) {
    $("details-title").textContent = title;
    $("details-kind").textContent = kind;
    const rows = Object.keys(props).sort().map((k) =>
      GR.row([GR.el("th", null, k), GR.el("td", "mono", GR.show(props[k]))]),
    );
    if (!rows.length) rows.push(GR.row([GR.el("td", "muted", "no properties")]));
    GR.fillBody($("details-props").tBodies[0], rows);
  }

  function detailsOfNode(node) {
    const labels = node.labels.length ? node.labels.join(", ") : "no label";
    showDetails(`vertex · ${labels}${node.hop ? ` · ${node.hop} hop${node.hop > 1 ? "s" : ""} away` : ""}`,
      String(node.id), node.properties);
  }

  function detailsOfEdge(edge) {
    showDetails(`edge · ${edge.type} · ${edge.source} → ${edge.target}`, String(edge.id ?? "(no id)"),
      edge.properties);
  }

  function draw(data) {
    const elements = [];
    const keyOf = (id) => JSON.stringify(id); // cytoscape ids are strings; vertex ids may be any JSON value
    data.nodes.forEach((node) => {
      const label = node.labels[0] || "";
      elements.push({
        group: "nodes",
        data: {
          id: keyOf(node.id),
          caption: short(caption(node), 28),
          colour: label ? colourOf(label) : "#9aa0a6",
          centre: node.hop === 0 ? 1 : 0,
          record: node,
        },
      });
    });
    data.edges.forEach((edge, i) => {
      elements.push({
        group: "edges",
        data: { id: `e${i}`, source: keyOf(edge.source), target: keyOf(edge.target), type: edge.type, record: edge },
      });
    });
    if (cy) cy.destroy();
    cy = cytoscape({
      container: $("cy"),
      elements,
      wheelSensitivity: 0.3,
      style: [
        {
          selector: "node",
          style: {
            "background-color": "data(colour)",
            label: "data(caption)",
            "font-size": 11,
            "min-zoomed-font-size": 6, // unreadably small labels are left out until zoomed in
            color: "#222",
            "text-valign": "bottom",
            "text-margin-y": 4,
            width: 22,
            height: 22,
          },
        },
        { selector: "node[centre = 1]", style: { width: 34, height: 34, "border-width": 3, "border-color": "#222" } },
        {
          selector: "edge",
          style: {
            width: 1.5,
            "line-color": "#b0b4ba",
            "target-arrow-color": "#b0b4ba",
            "target-arrow-shape": "triangle",
            "curve-style": "bezier",
            label: "data(type)",
            "font-size": 9,
            "min-zoomed-font-size": 7,
            color: "#555",
            "text-rotation": "autorotate",
            "text-background-color": "#fff",
            "text-background-opacity": 0.8,
          },
        },
        { selector: ":selected", style: { "border-width": 3, "border-color": "#d62728", "line-color": "#d62728" } },
      ],
      // rings by distance from the centre vertex
      layout: {
        name: "concentric",
        concentric: (n) => 10 - n.data("record").hop,
        levelWidth: () => 1,
        minNodeSpacing: 36,
        animate: false,
        padding: 30,
      },
    });
    if (cy.zoom() > 1.25) {
      cy.zoom(1.25); // a few vertices: keep labels at their size rather than fill the panel
      cy.center();
    }
    cy.on("tap", "node", (e) => detailsOfNode(e.target.data("record")));
    cy.on("tap", "edge", (e) => detailsOfEdge(e.target.data("record")));
    cy.on("dbltap", "node", (e) => {
      const next = new URLSearchParams(window.location.search);
      next.set("id", String(e.target.data("record").id));
      window.location.search = next.toString();
    });
    document.body.dataset.nodes = String(cy.nodes().length);
    document.body.dataset.edges = String(cy.edges().length);
  }

  async function load() {
    const id = params.get("id");
    $("vertex-id").value = id || "";
    if (params.get("depth")) $("depth").value = params.get("depth");
    if (params.get("limit")) $("limit").value = params.get("limit");
    const query = new URLSearchParams({ id: id || "" });
    for (const key of ["sink", "depth", "limit"]) if (params.get(key)) query.set(key, params.get(key));
    let answer;
    try {
      answer = await GR.getJSON(`/graph/data?${query}`);
    } catch (e) {
      message(`cannot reach the daemon: ${e.message}`, "error");
      document.body.dataset.state = "error";
      return;
    }
    const sinks = answer.body.sinks || [];
    $("sink").replaceChildren(...sinks.map((name) => {
      const option = GR.el("option", null, name);
      option.value = name;
      return option;
    }));
    if (params.get("sink")) $("sink").value = params.get("sink");
    if (!answer.ok && (id || answer.status !== 400)) {
      message(answer.body.error || `HTTP ${answer.status}`, "error");
      document.body.dataset.state = "error";
      return;
    }
    if (!id) {
      message("Give a vertex id to see its neighbourhood.");
      document.body.dataset.state = "empty";
      return;
    }
    const data = answer.body;
    const more = data.truncated ? ` (there are more than ${data.limit} edges: raise the limit to see them)` : "";
    message(`${data.nodes.length} vertices, ${data.edges.length} edges within ${data.depth} hop` +
      `${data.depth > 1 ? "s" : ""} of ${JSON.stringify(data.id)} in sink ${data.sink} (${data.kind})${more}`);
    draw(data);
    detailsOfNode(data.nodes[0]);
    document.body.dataset.state = "drawn";
  }

  load();
})();
