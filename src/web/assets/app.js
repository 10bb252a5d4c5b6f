// labmq-web: submits the form without a reload and adds new results to the table as they
// are stored. Everything shown is set with textContent, never parsed as HTML.
"use strict";

(function () {
  const table = document.getElementById("results-table");
  const form = document.getElementById("submit-form");
  const input = document.getElementById("tasks");
  const report = document.getElementById("report");
  if (!table || !form || !input || !report) return;
  const tbody = table.tBodies[0];
  const pageSize = Number(table.dataset.pageSize) || 50;
  let latest = Number(table.dataset.latest) || 0;

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function link(href, text, className, download) {
    const a = el("a", text, className);
    a.href = href;
    if (download) a.setAttribute("download", "");
    return a;
  }

  function row(result) {
    const tr = el("tr", undefined, result.ok ? "ok fresh" : "error fresh");
    tr.dataset.id = result.id;
    tr.dataset.seq = result.seq;
    tr.append(el("td", result.seq), el("td", result.task, "task"), el("td", result.kind || "-"));
    const value = el("td", undefined, "value");
    value.append(el("span", result.short, "short"));
    if (result.truncated) {
      const id = encodeURIComponent(result.id);
      value.append(" ", link("/results/" + id + "/value", "whole value", "whole", true));
      value.append(" ", link("/api/results/" + id, "JSON", "json"));
    }
    tr.append(value, el("td", result.processed_at, "when"));
    return tr;
  }

  function showReport(body, status) {
    report.replaceChildren();
    if (body && body.error) {
      report.append(el("p", body.error.message, "error"));
      return;
    }
    if (!body || !Array.isArray(body.tasks)) {
      report.append(el("p", "submit failed (HTTP " + status + ")", "error"));
      return;
    }
    report.append(el("p", body.accepted + " accepted, " + body.rejected + " rejected"));
    const t = el("table", undefined, "report");
    const head = el("tr");
    head.append(el("th", "Task"), el("th", "Status"), el("th", "Id or reason"));
    t.append(el("thead"));
    t.tHead.append(head);
    const rows = el("tbody");
    for (const task of body.tasks) {
      const tr = el("tr", undefined, task.status);
      const detail = el("td");
      if (task.status === "accepted") detail.append(el("code", task.id));
      else detail.textContent = task.reason;
      tr.append(el("td", task.task), el("td", task.status), detail);
      rows.append(tr);
    }
    t.append(rows);
    report.append(t);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const response = await fetch("/api/tasks", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify([input.value]),
      });
      let body = null;
      try { body = await response.json(); } catch (_) { body = null; }
      showReport(body, response.status);
      poll();
    } catch (error) {
      showReport({ error: { message: "submit failed: " + error } }, 0);
    } finally {
      button.disabled = false;
    }
  });

  if (table.dataset.live !== "true") return;
  let polling = false;

  async function poll() {
    if (polling) return;
    polling = true;
    try {
      const params = new URLSearchParams({ after: String(latest), limit: "200" });
      if (table.dataset.kind) params.set("kind", table.dataset.kind);
      if (table.dataset.ok) params.set("ok", table.dataset.ok);
      const response = await fetch("/api/results?" + params);
      if (!response.ok) return;
      const body = await response.json();
      for (const result of body.results) {
        // Oldest first: each goes on top. A stored-again result replaces its old row.
        for (const old of tbody.querySelectorAll("tr")) {
          if (old.dataset.id === result.id) old.remove();
        }
        tbody.prepend(row(result));
        latest = Math.max(latest, result.seq);
      }
      while (tbody.rows.length > pageSize) tbody.deleteRow(tbody.rows.length - 1);
      const empty = document.getElementById("empty");
      if (empty && tbody.rows.length > 0) empty.remove();
    } catch (_) {
      // The server may be restarting; the next tick tries again.
    } finally {
      polling = false;
    }
  }

  setInterval(poll, 1000);
})();
