// Keeps a live page fresh: every data-refresh-ms, fetches the page again and swaps its
// <main id="live"> in, without a reload (which would lose the scroll position and any
// text being typed). A page whose fresh copy has no refresh stops there (a finished
// replay). Nothing else runs on the page.
(function () {
  "use strict";
  function schedule() {
    var main = document.getElementById("live");
    var every = main && Number(main.dataset.refreshMs);
    if (!every) return;
    setTimeout(function () {
      fetch(location.href, { cache: "no-store" })
        .then(function (answer) { return answer.ok ? answer.text() : Promise.reject(answer.status); })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
          if (fresh) { document.getElementById("live").replaceWith(fresh); }
        })
        .catch(function () { /* the next turn tries again */ })
        .finally(schedule);
    }, every);
  }
  document.addEventListener("DOMContentLoaded", schedule);
})();
