// Live pages: on each `changed` from /live, fetch this page again and swap its live part.
(function () {
  "use strict";
  var dot = document.getElementById("live-dot");
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, {credentials: "same-origin", headers: {"X-Partial": "1"}})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live-part"), old = document.getElementById("live-part");
        if (fresh && old) {
          // a form being typed into is left alone until it is sent
          var typing = document.activeElement && old.contains(document.activeElement) &&
                       document.activeElement.tagName === "INPUT" && document.activeElement.value;
          if (!typing) {
            old.innerHTML = fresh.innerHTML;
            document.dispatchEvent(new CustomEvent("carecard:refreshed"));
          }
        }
      })
      .finally(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }
  if (!window.EventSource) { return; }
  var source = new EventSource("/live");
  source.addEventListener("hello", function () { if (dot) { dot.classList.add("on"); } });
  source.addEventListener("changed", refresh);
  source.addEventListener("logout", function () { source.close(); window.location.href = "/login"; });
  source.onerror = function () { if (dot) { dot.classList.remove("on"); } };
})();
