// tuneloop studio: the annotation page. Plain JavaScript, no framework, no network beyond
// this server. Everything shown comes from the server-rendered (escaped) page; this script
// only reads clicks and keys, keeps the response, saves drafts and submits.
(function () {
  "use strict";
  const dataNode = document.getElementById("item-data");
  if (!dataNode) return;
  const data = JSON.parse(dataNode.textContent);
  const kind = data.kind;
  const n = data.answers;
  let version = data.version;
  let timer = null;
  const status = document.getElementById("status");
  const value = data.value || {};
  value.comment = value.comment || "";
  if (kind === "rate") {
    value.ratings = value.ratings || Array.from({ length: n }, () => ({}));
    value.flags = value.flags || Array.from({ length: n }, () => []);
  }
  if (kind === "rank") value.ranking = value.ranking || [];

  function say(text, cls) {
    status.textContent = text;
    status.className = cls || "muted";
  }

  // --- rate: score buttons, a highlighted criterion that keys move, flags -----------------
  const rows = Array.from(document.querySelectorAll(".criteria .row"));
  let current = 0;
  function paintRate() {
    rows.forEach((row, i) => {
      const a = Number(row.dataset.answer);
      const c = row.dataset.criterion;
      row.classList.toggle("current", i === current);
      row.querySelectorAll("button.score").forEach((b) => {
        b.setAttribute("aria-pressed", String(value.ratings[a][c] === Number(b.dataset.score)));
      });
    });
    document.querySelectorAll("input.flag").forEach((box) => {
      box.checked = value.flags[Number(box.dataset.answer)].includes(box.dataset.flag);
    });
    if (rows[current]) rows[current].scrollIntoView({ block: "nearest" });
  }
  function score(i, s) {
    const row = rows[i];
    value.ratings[Number(row.dataset.answer)][row.dataset.criterion] = s;
    current = Math.min(i + 1, rows.length - 1);
    changed();
    paintRate();
  }
  rows.forEach((row, i) => {
    row.querySelectorAll("button.score").forEach((b) =>
      b.addEventListener("click", () => score(i, Number(b.dataset.score)))
    );
  });
  document.querySelectorAll("input.flag").forEach((box) =>
    box.addEventListener("change", () => {
      const list = value.flags[Number(box.dataset.answer)];
      const at = list.indexOf(box.dataset.flag);
      if (box.checked && at < 0) list.push(box.dataset.flag);
      if (!box.checked && at >= 0) list.splice(at, 1);
      changed();
    })
  );

  // --- compare ----------------------------------------------------------------------------
  function paintChoice() {
    document.querySelectorAll("button.choice").forEach((b) =>
      b.setAttribute("aria-pressed", String(value.choice === b.dataset.choice))
    );
  }
  function choose(c) {
    value.choice = c;
    paintChoice();
    changed();
  }
  document.querySelectorAll("button.choice").forEach((b) =>
    b.addEventListener("click", () => choose(b.dataset.choice))
  );

  // --- rank -------------------------------------------------------------------------------
  const rankList = document.getElementById("ranking");
  function paintRank() {
    if (!rankList) return;
    rankList.replaceChildren();
    value.ranking.forEach((pos) => {
      const li = document.createElement("li");
      li.textContent = "Answer " + String.fromCharCode(65 + pos);
      rankList.appendChild(li);
    });
  }
  function rankAdd(pos) {
    if (pos < 0 || pos >= n || value.ranking.includes(pos)) return;
    value.ranking.push(pos);
    if (value.ranking.length === n - 1) {
      // the last one left goes last
      for (let i = 0; i < n; i++) if (!value.ranking.includes(i)) value.ranking.push(i);
    }
    paintRank();
    changed();
  }
  document.querySelectorAll("button.rank").forEach((b) =>
    b.addEventListener("click", () => rankAdd(Number(b.dataset.pos)))
  );
  const clear = document.getElementById("rank-clear");
  if (clear) clear.addEventListener("click", () => { value.ranking = []; paintRank(); changed(); });

  // --- text fields ------------------------------------------------------------------------
  document.querySelectorAll("textarea[data-field]").forEach((area) => {
    value[area.dataset.field] = area.value;
    area.addEventListener("input", () => { value[area.dataset.field] = area.value; changed(); });
  });

  // --- saving -----------------------------------------------------------------------------
  // Saves run one after another (a chain), each built when its turn comes, so it carries
  // the version the previous save returned; `edits` counts changes and `savedEdits` those
  // the server has, so an edit made while a save is on its way is never marked saved.
  let edits = 0;
  let savedEdits = 0;
  let chain = Promise.resolve(true);
  function body(submit) {
    const sent = { comment: value.comment };
    if (kind === "rate") { sent.ratings = value.ratings; sent.flags = value.flags; }
    if (kind === "compare" && value.choice) sent.choice = value.choice;
    if (kind === "rank" && value.ranking.length) sent.ranking = value.ranking;
    if (kind === "correct") sent.correction = value.correction;
    return JSON.stringify({ value: sent, version: version, submit: submit });
  }
  function changed() {
    edits += 1;
    say("unsaved changes");
    clearTimeout(timer);
    timer = setTimeout(() => save(false), 1200);
  }
  function save(submit) {
    clearTimeout(timer);
    chain = chain.then(() => saveNow(submit), () => saveNow(submit));
    return chain;
  }
  async function saveNow(submit) {
    if (!submit && edits === savedEdits) return true;
    const sending = edits;
    let res;
    try {
      res = await fetch(data.url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": data.csrf },
        body: body(submit),
        credentials: "same-origin",
      });
    } catch (err) {
      say("could not reach the server; your work is kept here, try again", "error");
      return false;
    }
    const out = await res.json().catch(() => ({}));
    if (res.ok) {
      version = out.version;
      savedEdits = sending;
      if (edits !== savedEdits) {
        say("unsaved changes");
        timer = setTimeout(() => save(false), 1200);
      } else {
        say(submit ? "submitted" : "draft saved", "ok");
      }
      return true;
    }
    if (res.status === 409) {
      say("this item changed elsewhere (" + (out.error || "conflict") + "): reload to see it; nothing was overwritten", "error");
      const reload = document.createElement("button");
      reload.textContent = "Reload";
      reload.addEventListener("click", () => window.location.reload());
      status.appendChild(document.createTextNode(" "));
      status.appendChild(reload);
    } else if (res.status === 401) {
      say("your session ended: log in again in another tab, then save", "error");
    } else {
      say(out.error || ("error " + res.status), "error");
    }
    return false;
  }
  async function goNext() {
    // taking the next item is a POST (it reserves a place), with the CSRF token
    const res = await fetch(data.next, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": data.csrf },
      body: "{}",
      credentials: "same-origin",
    });
    const out = await res.json().catch(() => ({}));
    if (res.ok && out.item_id) window.location.assign(data.item_prefix + out.item_id);
    else window.location.assign(data.task_url + "?done=1");
  }
  async function submit() {
    if (await save(true)) {
      savedEdits = edits;
      await goNext();
    }
  }
  document.getElementById("save").addEventListener("click", () => save(false));
  document.getElementById("submit").addEventListener("click", submit);
  window.addEventListener("beforeunload", (e) => { if (edits !== savedEdits) e.preventDefault(); });

  // --- keys -------------------------------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); submit(); return; }
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") { e.preventDefault(); save(false); return; }
    const typing = e.target && (e.target.tagName === "TEXTAREA" || e.target.tagName === "INPUT");
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key.toLowerCase();
    if (kind === "compare" && { a: 1, b: 1, t: 1, x: 1 }[k]) {
      choose({ a: "a", b: "b", t: "tie", x: "both_bad" }[k]);
    } else if (kind === "rate") {
      if (k >= "1" && k <= "9") {
        const s = Number(k);
        if (s >= data.scale[0] && s <= data.scale[1]) score(current, s);
      } else if (k === "j" || k === "arrowdown") { current = Math.min(current + 1, rows.length - 1); paintRate(); }
      else if (k === "k" || k === "arrowup") { current = Math.max(current - 1, 0); paintRate(); }
      else if ("qwer".includes(k) && rows[current]) {
        const a = Number(rows[current].dataset.answer);
        const flag = data.flags["qwer".indexOf(k)];
        if (flag === undefined) return;
        const list = value.flags[a];
        const at = list.indexOf(flag);
        if (at >= 0) list.splice(at, 1); else list.push(flag);
        paintRate();
        changed();
      }
    } else if (kind === "rank") {
      if (k === "backspace") { value.ranking.pop(); paintRank(); changed(); }
      else if (k.length === 1 && k >= "a" && k <= "z") rankAdd(k.charCodeAt(0) - 97);
    }
  });

  if (kind === "rate") paintRate();
  if (kind === "compare") paintChoice();
  if (kind === "rank") paintRank();
})();

// The job page: stream the job's log by polling from the last byte read.
(function () {
  "use strict";
  const log = document.getElementById("job-log");
  if (!log) return;
  const status = document.getElementById("job-status");
  let offset = 0;
  async function poll() {
    let out;
    try {
      const res = await fetch(log.dataset.url + "?offset=" + offset, { credentials: "same-origin" });
      if (res.status === 401 || res.status === 403 || res.status === 404) return;
      if (!res.ok) { setTimeout(poll, 3000); return; }
      out = await res.json();
    } catch (err) {
      setTimeout(poll, 3000);
      return;
    }
    if (out.text) {
      log.appendChild(document.createTextNode(out.text));
      log.scrollTop = log.scrollHeight;
    }
    offset = out.offset;
    status.textContent = out.status;
    if (out.status === "running" || out.status === "cancelling" || out.text) setTimeout(poll, 1000);
  }
  poll();
})();
