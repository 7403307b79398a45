// ragloop review: keyboard actions, decisions as JSON POSTs with the CSRF token, next item without a reload.
// Every piece of text from the server arrives as escaped HTML rendered by the templates; this script
// only ever assigns server-rendered fragments or sets textContent.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const queue = document.body.dataset.queue;
  const skipped = [];
  let chunksChanged = false;
  let pendingConflict = null;

  const $ = (sel, root) => (root || document).querySelector(sel);
  const current = () => $("#current");

  function flash(text, kind) {
    const el = $("#flash");
    if (!el) return;
    el.textContent = text;
    el.className = kind || "ok";
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {error: "HTTP " + response.status}; }
    return {status: response.status, data};
  }

  async function loadNext(itemId) {
    const params = new URLSearchParams(location.search);
    params.set("skipped", skipped.join(","));
    if (itemId) params.set("item", itemId); else params.delete("item");
    const response = await fetch("/fragment/" + queue + "?" + params.toString(), {credentials: "same-origin"});
    const data = await response.json();
    if (!response.ok) { flash(data.error || "could not load the next item", "error"); return; }
    $("#item").innerHTML = data.item_html;
    $("#progress").innerHTML = data.progress_html;
    chunksChanged = false;
    pendingConflict = null;
  }

  async function decide(action, payload, baseEvent) {
    const art = current();
    if (!art) return;
    const body = {
      queue: art.dataset.queue, item_id: art.dataset.item, action: action, payload: payload || {},
      base_event_id: baseEvent !== undefined ? baseEvent : art.dataset.baseEvent,
      line: art.dataset.line, run: art.dataset.run,
    };
    const result = await post("/api/decide", body);
    if (result.status === 409) {
      const c = result.data.conflict;
      pendingConflict = {action, payload, base: c.event_id};
      flash(c.reviewer + " already recorded " + c.action + " on this item at " + c.at +
            ". Press Enter (or y) to record yours anyway, Esc to keep theirs.", "conflict");
      return;
    }
    if (result.status !== 200) { flash(result.data.error || ("HTTP " + result.status), "error"); return; }
    if (action === "skip") skipped.push(body.item_id);
    flash(action + " recorded for " + body.item_id.slice(0, 12), "ok");
    await loadNext();
  }

  function panel(id, show) {
    const el = $(id);
    if (!el) return null;
    el.hidden = !show;
    return el;
  }

  function openEdit() {
    const el = panel("#edit-panel", true);
    if (el) $("#edit-answer").focus();
  }

  function openReject() {
    const el = panel("#reject-panel", true);
    if (el) $("#reject-reason").focus();
  }

  function closePanels() {
    panel("#edit-panel", false);
    panel("#reject-panel", false);
    if (document.activeElement) document.activeElement.blur();
  }

  function submitEdit() {
    const payload = {};
    const q = $("#edit-question").value.trim();
    const a = $("#edit-answer").value.trim();
    if (q !== $("#edit-question").defaultValue.trim()) payload.question = q;
    if (a !== $("#edit-answer").defaultValue.trim()) payload.reference_answer = a;
    if (chunksChanged) {
      payload.reference_chunk_ids = Array.from(document.querySelectorAll("#edit-chunks li")).map((li) => li.dataset.chunk);
    }
    if (!Object.keys(payload).length) { flash("the edit changes nothing", "error"); return; }
    decide("edit", payload);
  }

  function submitReject() {
    decide("reject", {reason: $("#reject-reason").value, note: $("#reject-note").value});
  }

  function grade(value) {
    const comment = $("#comment");
    decide("grade", {grade: value, comment: comment ? comment.value : ""});
  }

  function promote() {
    const payload = {question: $("#promote-question").value.trim(), reference_answer: $("#promote-answer").value.trim()};
    if (!payload.reference_answer) { flash("write a reference answer first", "error"); $("#promote-answer").focus(); return; }
    decide("promote", payload);
  }

  function prefer(value) {
    const comment = $("#comment");
    decide("prefer", {better: value, comment: comment ? comment.value : ""});
  }

  async function search(text) {
    const response = await fetch("/api/search?q=" + encodeURIComponent(text), {credentials: "same-origin"});
    $("#search-results").innerHTML = await response.text();
    const first = $("#search-results .add-chunk");
    if (first) first.focus();
  }

  function addChunk(button) {
    const list = $("#edit-chunks");
    if (button.dataset.replace) list.innerHTML = "";
    if (list.querySelector('li[data-chunk="' + CSS.escape(button.dataset.chunk) + '"]')) return;
    const li = document.createElement("li");
    li.dataset.chunk = button.dataset.chunk;
    li.textContent = button.dataset.label + " ";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove-chunk";
    remove.textContent = "remove";
    li.appendChild(remove);
    list.appendChild(li);
    chunksChanged = true;
    flash(button.dataset.replace ? "evidence replaced" : "evidence chunk added", "ok");
    $("#edit-answer").focus();
  }

  document.addEventListener("click", (event) => {
    const t = event.target.closest("button");
    if (!t) return;
    if (t.classList.contains("add-chunk")) { addChunk(t); return; }
    if (t.classList.contains("remove-chunk")) { t.closest("li").remove(); chunksChanged = true; return; }
    const action = t.dataset.action;
    if (!action) return;
    if (action === "edit") openEdit();
    else if (action === "reject") openReject();
    else if (action === "grade") grade(t.dataset.grade);
    else if (action === "prefer") prefer(t.dataset.better);
    else if (action === "promote") promote();
    else decide(action);
  });

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (form.id === "edit-panel") { event.preventDefault(); submitEdit(); }
    else if (form.id === "reject-panel") { event.preventDefault(); submitReject(); }
    else if (form.id === "reviewer-form") {
      event.preventDefault();
      const r = await post("/api/reviewer", {name: $("#reviewer-name").value});
      flash(r.status === 200 ? "reviewing as " + r.data.reviewer : r.data.error, r.status === 200 ? "ok" : "error");
      if (r.status === 200) document.activeElement.blur();  // the keys act on the queue again
    } else if (form.id === "apply-form") {
      event.preventDefault();
      const body = {line: form.dataset.line, promote_to: $("#promote").checked ? $("#promote-to").value : ""};
      const r = await post("/api/apply", body);
      if (r.status !== 200) { flash(r.data.error, "error"); return; }
      let text = "applied: line " + r.data.line + " is now version " + r.data.golden_set_id.slice(0, 12);
      if (r.data.promotion) text += "; line " + r.data.promotion.line + " holds " + r.data.promotion.items + " reviewed items (chosen)";
      flash(text, "ok");
      if ($("#line-version")) $("#line-version").textContent = "version " + r.data.golden_set_id.slice(0, 12);
      await loadNext();
    }
  });

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target.matches && target.matches("input, textarea, select");
    if (pendingConflict && (event.key === "Enter" || event.key === "y")) {
      event.preventDefault();
      const c = pendingConflict;
      pendingConflict = null;
      decide(c.action, c.payload, c.base);
      return;
    }
    if (event.key === "Escape") { pendingConflict = null; flash("", "ok"); closePanels(); return; }
    if (target.id === "evidence-search" && event.key === "Enter") { event.preventDefault(); search(target.value); return; }
    const editing = $("#edit-panel") && !$("#edit-panel").hidden;
    if (editing && event.key === "/" && (event.ctrlKey || !typing)) { event.preventDefault(); $("#evidence-search").focus(); return; }
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && target.closest && target.closest("#edit-panel")) {
      event.preventDefault(); submitEdit(); return;
    }
    if (target.closest && target.closest("#reject-panel")) {
      if (/^[1-9]$/.test(event.key) && target.id === "reject-reason") {
        const select = $("#reject-reason");
        const i = Number(event.key) - 1;
        if (i < select.options.length) select.selectedIndex = i;
        event.preventDefault();
        return;
      }
      if (event.key === "Enter") { event.preventDefault(); submitReject(); return; }
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    if (target.closest && target.closest("#edit-panel") && event.key !== "/") return;
    const key = event.key;
    const handlers = {
      golden: {a: () => decide("approve"), e: openEdit, r: openReject, s: () => decide("skip")},
      stale: {a: () => decide("reapprove"), e: openEdit, x: () => decide("retire"), s: () => decide("skip")},
      answers: {"1": () => grade("correct"), "2": () => grade("partially_correct"), "3": () => grade("incorrect"),
                m: () => $("#comment").focus(), s: () => decide("skip")},
      production: {p: promote, d: () => decide("dismiss"), s: () => decide("skip")},
      compare: {b: () => prefer("baseline"), c: () => prefer("candidate"), t: () => prefer("tie"),
                m: () => $("#comment").focus(), s: () => decide("skip")},
    }[queue] || {};
    if (handlers[key] && current()) { event.preventDefault(); handlers[key](); }
  });
})();
