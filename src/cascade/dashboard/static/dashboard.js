// Cascade dashboard: keeps a running workflow's timeline up to date without reloading the
// page. The element with data-live-url is re-fetched every second (the server renders the
// part) until the workflow has ended; nothing else on the page runs script.
(function () {
  "use strict";
  var live = document.querySelector("[data-live-url]");
  if (!live) { return; }
  var url = live.getAttribute("data-live-url");
  var PERIOD = 1000;

  function running() {
    var t = live.querySelector("[data-running]");
    return t && t.getAttribute("data-running") === "true";
  }

  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (!answer.ok) { throw new Error("HTTP " + answer.status); }
        return answer.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        if (running()) { window.setTimeout(poll, PERIOD); }
      })
      .catch(function () { window.setTimeout(poll, PERIOD * 5); });
  }

  if (running()) { window.setTimeout(poll, PERIOD); }
})();
