// The jobs page follows its unfinished jobs: every 2 s it asks the server for their state and
// updates status, stage and progress in place; it stops when no job is queued or running.
(function () {
  "use strict";
  var table = document.getElementById("jobs");
  if (!table) { return; }
  var stateUrl = table.getAttribute("data-state-url");
  var FINAL = { succeeded: true, failed: true, cancelled: true };

  function pending() {
    return Array.prototype.filter.call(table.querySelectorAll("tr.job"), function (row) {
      return !FINAL[row.getAttribute("data-status")];
    });
  }

  function render(row, job) {
    row.setAttribute("data-status", job.status);
    row.setAttribute("data-progress", job.progress.toFixed(4));
    var badge = row.querySelector(".status .badge");
    badge.textContent = job.status;
    badge.className = "badge " + job.status;
    row.querySelector("progress").value = job.progress;
    row.querySelector(".pct").textContent = Math.round(job.progress * 100) + "%";
    row.querySelector(".stage").textContent = job.stage || "";
    if (job.error && !row.querySelector(".progress-cell .error")) {
      var err = document.createElement("div");
      err.className = "error small";
      err.textContent = job.error;
      row.querySelector(".progress-cell").appendChild(err);
    }
    var link = row.querySelector("td.link");
    if (job.status === "succeeded" && !link.querySelector("a")) {
      var a = document.createElement("a");
      a.href = row.getAttribute("data-report");
      a.textContent = "Report";
      link.appendChild(a);
    }
  }

  function poll() {
    var rows = pending();
    if (!rows.length) { return; }
    var ids = rows.map(function (row) { return row.getAttribute("data-id"); });
    fetch(stateUrl + "?ids=" + encodeURIComponent(ids.join(",")), {
      credentials: "same-origin", headers: { "Accept": "application/json" }
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (body) {
      body.data.forEach(function (job) {
        var row = table.querySelector('tr.job[data-id="' + job.id + '"]');
        if (row) { render(row, job); }
      });
      window.setTimeout(poll, 2000);
    }).catch(function () {
      window.setTimeout(poll, 5000);  // the server may be restarting: try again, more slowly
    });
  }

  window.setTimeout(poll, 2000);
})();
