// A card's track on a Leaflet map: tiles only when a tile URL is configured, otherwise the track,
// home and a scale on a plain background (works offline).
(function () {
  "use strict";
  var element = document.getElementById("map");
  if (!element || !window.L) { return; }
  var map = L.map(element, {zoomControl: true, attributionControl: true});
  var layers = L.layerGroup().addTo(map);
  L.control.scale({metric: true, imperial: false}).addTo(map);
  var tilesAdded = false;
  function draw() {
    var node = document.getElementById("map-data");
    if (!node) { return; }
    var data = JSON.parse(node.textContent);
    if (data.tiles && !tilesAdded) {
      L.tileLayer(data.tiles, {maxZoom: 19, attribution: data.attribution || ""}).addTo(map);
      tilesAdded = true;
    }
    layers.clearLayers();
    var bounds = [];
    if (data.track.length) {
      L.polyline(data.track, {color: "#1f5fbf", weight: 4}).addTo(layers);
      data.track.forEach(function (p) { bounds.push(p); });
      L.circleMarker(data.track[data.track.length - 1], {radius: 7, color: "#1f5fbf", fillOpacity: 1})
        .addTo(layers);
    }
    if (data.home) {
      L.circleMarker(data.home, {radius: 9, color: "#c03", weight: 3, fillOpacity: 0.2})
        .bindTooltip("⌂", {permanent: true, direction: "top"}).addTo(layers);
      bounds.push(data.home);
    }
    if (bounds.length > 1) { map.fitBounds(bounds, {padding: [24, 24], maxZoom: 17}); }
    else if (bounds.length === 1) { map.setView(bounds[0], 16); }
    else { map.setView([24.9, 118.6], 10); }
  }
  draw();
  document.addEventListener("carecard:refreshed", draw);
})();
