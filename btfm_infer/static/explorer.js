// BTFM explorer: the quick-look on a Leaflet map; a click asks the server for a similarity layer,
// labelled points for a logistic-regression class map. Everything is fetched from this server.
"use strict";

(function () {
  const statusLine = document.getElementById("status");
  const legend = document.getElementById("legend");
  const opacity = document.getElementById("opacity");
  const points = [];
  let meta = null;
  let map = null;
  let layerControl = null;
  let similarityLayer = null;
  let classLayer = null;
  let clickMarker = null;

  function setStatus(text, isError) {
    statusLine.textContent = text;
    statusLine.className = isError ? "error" : "";
  }

  // Map coordinates -> the query naming the pixel: exact pixel indices in pixel mode
  // (L.CRS.Simple, lat = -row, lng = col), longitude/latitude in basemap mode.
  function pixelQuery(latlng) {
    if (meta.mode === "geographic") {
      return {lat: latlng.lat, lon: latlng.lng};
    }
    return {row: Math.floor(-latlng.lat), col: Math.floor(latlng.lng)};
  }

  function describe(query) {
    return "row" in query ? `row ${query.row}, col ${query.col}`
      : `${query.lat.toFixed(5)}°N, ${query.lon.toFixed(5)}°E`;
  }

  // Fetch an image; resolve to {url, headers} (a blob: URL) or throw the server's message.
  async function fetchImage(url, init) {
    const response = await fetch(url, init);
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return {url: URL.createObjectURL(await response.blob()), headers: response.headers};
  }

  function replaceOverlay(old, url, className, name) {
    if (old) {
      map.removeLayer(old);
      layerControl.removeLayer(old);
      URL.revokeObjectURL(old.getElement() ? old.getElement().src : "");
    }
    const layer = L.imageOverlay(url, L.latLngBounds(meta.overlay_bounds),
      {className: className, opacity: Number(opacity.value), pane: "layers"}).addTo(map);
    layerControl.addOverlay(layer, name);
    return layer;
  }

  async function showSimilarity(latlng) {
    const query = pixelQuery(latlng);
    setStatus(`similarity to ${describe(query)}…`);
    try {
      const image = await fetchImage("similarity?" + new URLSearchParams(query));
      similarityLayer = replaceOverlay(similarityLayer, image.url, "layer-similarity", "similarity");
      const [low, high] = (image.headers.get("X-Range") || "0,1").split(",").map(Number);
      const [row, col] = (image.headers.get("X-Pixel") || ",").split(",").map(Number);
      // mark the pixel's centre in pixel mode, the clicked point in basemap mode
      const centre = meta.mode === "geographic" ? latlng : L.latLng(-(row + 0.5), col + 0.5);
      if (clickMarker) { map.removeLayer(clickMarker); }
      clickMarker = L.circleMarker(centre, {radius: 5, color: "#fff", weight: 2, fillOpacity: 0}).addTo(map);
      legend.innerHTML = '<div>cosine similarity</div><div class="ramp"></div>' +
        `<div class="ends"><span>${low.toFixed(3)}</span><span>${high.toFixed(3)}</span></div>`;
      setStatus(`similarity to pixel (row ${row}, col ${col})`);
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  function labelColour(label) {
    const labels = [...new Set(points.map((p) => p.label))];
    const index = labels.indexOf(label);
    return meta.palette[(index < 0 ? labels.length : index) % meta.palette.length];
  }

  function addPoint(latlng) {
    const label = document.getElementById("label").value.trim();
    if (!label) {
      setStatus("type a label first", true);
      return;
    }
    const query = pixelQuery(latlng);
    const colour = labelColour(label);
    const marker = L.circleMarker(latlng, {radius: 6, color: "#fff", weight: 2, fillColor: colour, fillOpacity: 1})
      .bindTooltip(label).addTo(map);
    points.push(Object.assign({label: label, marker: marker}, query));
    document.getElementById("point-count").textContent = String(points.length);
    setStatus(`point "${label}" at ${describe(query)}`);
  }

  async function classify() {
    setStatus(`classifying with ${points.length} point(s)…`);
    const body = points.map((p) => {
      const {marker, ...rest} = p;
      return rest;
    });
    try {
      const image = await fetchImage("classify", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body)});
      classLayer = replaceOverlay(classLayer, image.url, "layer-classes", "classes");
      const entries = JSON.parse(image.headers.get("X-Legend") || "[]");
      legend.innerHTML = "<div>classes</div>" + entries.map(([name, colour]) =>
        `<div><span class="swatch" style="background:${colour}"></span>${escapeHtml(name)}</div>`).join("");
      setStatus(`class map of ${entries.length} classes`);
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  function escapeHtml(text) {
    const span = document.createElement("span");
    span.textContent = text;
    return span.innerHTML;
  }

  function clearPoints() {
    points.splice(0).forEach((p) => map.removeLayer(p.marker));
    document.getElementById("point-count").textContent = "0";
    setStatus("points cleared");
  }

  function buildMap() {
    const geographic = meta.mode === "geographic";
    map = L.map("map", geographic ? {} : {crs: L.CRS.Simple, minZoom: -10, maxZoom: 6, zoomSnap: 0.25});
    const bounds = L.latLngBounds(meta.overlay_bounds);
    map.createPane("layers");  // image layers below the point markers (overlayPane, z-index 400)
    map.getPane("layers").style.zIndex = 350;
    const base = {};
    if (geographic) {
      base.basemap = L.tileLayer(meta.basemap, {attribution: meta.attribution, maxZoom: 19}).addTo(map);
    }
    const quicklook = L.imageOverlay("quicklook.png", bounds, {className: "layer-quicklook", pane: "layers"}).addTo(map);
    layerControl = L.control.layers(base, {"quick-look": quicklook}, {position: "topleft"}).addTo(map);
    map.fitBounds(bounds, {paddingBottomRight: [document.getElementById("panel").offsetWidth + 10, 0]});
    map.on("click", (event) => {
      const mode = document.querySelector("input[name=mode]:checked").value;
      if (mode === "label" || event.originalEvent.shiftKey) {
        addPoint(event.latlng);
      } else {
        showSimilarity(event.latlng);
      }
    });
    opacity.addEventListener("input", () => {
      [similarityLayer, classLayer].forEach((layer) => layer && layer.setOpacity(Number(opacity.value)));
    });
    document.getElementById("classify").addEventListener("click", classify);
    document.getElementById("clear").addEventListener("click", clearPoints);
    document.getElementById("title").textContent = meta.source;
    setStatus(`${meta.width} x ${meta.height} px, ${meta.channels} dims, ${meta.crs}: click on the map`);
  }

  fetch("meta.json")
    .then((response) => response.json())
    .then((data) => { meta = data; buildMap(); })
    .catch((error) => setStatus(`cannot load meta.json: ${error.message}`, true));
}());
