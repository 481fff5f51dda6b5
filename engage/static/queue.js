// The queue page fetches its list again every few seconds and swaps it in when it changed,
// saying so to screen readers (aria-live, politely). Plain JavaScript, no framework.
(function () {
  "use strict";
  var box = document.getElementById("queue-items");
  var say = document.getElementById("queue-announce");
  if (!box || !say || !window.fetch) {
    return;
  }
  var every = (parseInt(box.getAttribute("data-refresh-seconds"), 10) || 10) * 1000;
  var busy = false;

  function ids() {
    var found = {};
    var items = box.querySelectorAll("[data-task-id]");
    for (var i = 0; i < items.length; i++) {
      found[items[i].getAttribute("data-task-id")] = true;
    }
    return found;
  }

  function swap(html, version) {
    var before = ids();
    var focused = document.activeElement;
    var focusedHref = focused && box.contains(focused) ? focused.getAttribute("href") : null;
    box.innerHTML = html;
    box.setAttribute("data-version", version);
    if (focusedHref) {
      var again = box.querySelector('a[href="' + focusedHref + '"]');
      (again || box).focus();
    }
    var after = ids();
    var total = 0;
    var added = 0;
    for (var id in after) {
      total += 1;
      if (!before[id]) {
        added += 1;
      }
    }
    say.textContent =
      (added ? added + (added === 1 ? " new task. " : " new tasks. ") : "Queue updated. ") +
      total + (total === 1 ? " task to call." : " tasks to call.");
  }

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(box.getAttribute("data-src"), {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" }
    })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
          return null;
        }
        if (!response.ok) {
          return null;
        }
        var version = response.headers.get("X-Queue-Version") || "";
        if (version && version === box.getAttribute("data-version")) {
          return null;
        }
        return response.text().then(function (html) {
          swap(html, version);
        });
      })
      .catch(function () {})
      .then(function () {
        busy = false;
      });
  }

  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      refresh();
    }
  });
})();
