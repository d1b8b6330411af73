// mcqtune serve page: plain JS, no build step. Talks to the same JSON API as any client.
"use strict";

const LETTERS = "ABCDEFGHIJ";
const MIN_OPTIONS = 2;
const MAX_OPTIONS = 10;
const $ = (id) => document.getElementById(id);
let knownAnswer = null; // gold index of the picked example, null for typed questions
let loadedNames = []; // [null (zero-shot), ...artifact names]

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function addChoice(text = "") {
  const list = $("choices");
  if (list.children.length >= MAX_OPTIONS) return;
  const item = document.createElement("li");
  const input = document.createElement("input");
  input.type = "text";
  input.value = text;
  input.required = true;
  input.className = "choice";
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.className = "remove";
  remove.addEventListener("click", () => {
    if (list.children.length > MIN_OPTIONS) { item.remove(); relabel(); }
  });
  item.append(input, remove);
  list.append(item);
  relabel();
  return input;
}

function relabel() {
  [...$("choices").children].forEach((item, i) => {
    item.querySelector("input").setAttribute("aria-label", `Option ${LETTERS[i]}`);
    item.querySelector("button").setAttribute("aria-label", `Remove option ${LETTERS[i]}`);
  });
  $("add-choice").disabled = $("choices").children.length >= MAX_OPTIONS;
}

function setChoices(choices) {
  $("choices").replaceChildren();
  choices.forEach((c) => addChoice(c));
}

function currentQuestion() {
  return {
    question: $("question").value,
    choices: [...document.querySelectorAll("#choices input")].map((i) => i.value),
  };
}

function renderResult(answer, choices, title) {
  const card = document.createElement("article");
  card.className = "result";
  card.dataset.adapter = answer.adapter ?? "";
  card.dataset.letter = answer.letter;
  const heading = document.createElement("h2");
  heading.textContent = title;
  const verdict = document.createElement("p");
  verdict.className = "verdict";
  verdict.innerHTML = `Answer <strong class="letter"></strong> <span class="muted"></span>`;
  verdict.querySelector(".letter").textContent = answer.letter;
  verdict.querySelector(".muted").textContent =
    `(${answer.scoring} scoring${answer.debiased ? ", debiased" : ""}, ${answer.latency_ms.toFixed(0)} ms)`;
  const kind = document.createElement("p");
  kind.className = "kind muted";
  kind.dataset.kind = answer.probability_kind;
  kind.textContent =
    answer.probability_kind === "calibrated"
      ? "Calibrated probabilities (temperature fitted on the artifact's validation split)."
      : "Uncalibrated scores: a softmax over option scores, not probabilities to trust.";
  card.append(heading, verdict, kind);
  if (knownAnswer !== null && knownAnswer < choices.length) {
    const right = answer.index === knownAnswer;
    const mark = document.createElement("p");
    mark.className = right ? "right" : "wrong";
    mark.dataset.correct = String(right);
    mark.textContent = right ? "✓ right" : `✗ wrong: the answer is ${LETTERS[knownAnswer]}`;
    card.append(mark);
  }
  const bars = document.createElement("ul");
  bars.className = "bars";
  answer.probabilities.forEach((p, i) => {
    const row = document.createElement("li");
    row.dataset.index = String(i);
    row.dataset.probability = String(p);
    if (i === answer.index) row.classList.add("chosen");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${LETTERS[i]}. ${choices[i]}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", (p * 100).toFixed(1));
    bar.setAttribute("aria-label", `${LETTERS[i]} probability`);
    const fill = document.createElement("span");
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(p * 100).toFixed(1)}%`;
    row.append(label, bar, pct);
    bars.append(row);
  });
  card.append(bars);
  return card;
}

function activeTab() {
  return $("tab-compare").getAttribute("aria-selected") === "true" ? "compare" : "answer";
}

async function submit(event) {
  event.preventDefault();
  const error = $("error");
  error.hidden = true;
  const q = currentQuestion();
  const panel = activeTab() === "compare" ? $("panel-compare") : $("panel-answer");
  panel.setAttribute("aria-busy", "true");
  try {
    if (activeTab() === "compare") {
      const questions = loadedNames.map((adapter) => ({ ...q, adapter }));
      const { answers } = await api("/v1/answer/batch", { questions });
      const grid = document.createElement("div");
      grid.className = "grid";
      answers.forEach((a) => grid.append(renderResult(a, q.choices, a.adapter ?? "zero-shot")));
      panel.replaceChildren(grid);
    } else {
      const adapter = $("adapter").value || null;
      const answer = await api("/v1/answer", { ...q, adapter });
      panel.replaceChildren(renderResult(answer, q.choices, adapter ?? "zero-shot"));
    }
    panel.dataset.done = String(Date.now());
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  } finally {
    panel.removeAttribute("aria-busy");
  }
}

function selectTab(name) {
  for (const tab of ["answer", "compare"]) {
    const on = tab === name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(on));
    $(`tab-${tab}`).tabIndex = on ? 0 : -1;
    $(`panel-${tab}`).hidden = !on;
  }
  $("adapter-row").hidden = name === "compare";
  $("submit").textContent = name === "compare" ? "Compare every loaded artifact" : "Answer";
}

function setUpTabs() {
  const tabs = [$("tab-answer"), $("tab-compare")];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab.id.slice(4)));
    tab.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
      const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
      next.focus();
      selectTab(next.id.slice(4));
    });
  });
}

async function loadAdapters() {
  const info = await api("/v1/adapters");
  $("base").textContent = `base model: ${info.base}`;
  const select = $("adapter");
  select.replaceChildren();
  const names = new Set();
  for (const a of info.loaded) {
    names.add(a.name);
    const option = new Option(
      a.name === null ? "zero-shot (base model)" :
        `${a.name} (${a.method}, ${a.formulation}${a.validation_accuracy == null ? "" :
          `, val. acc. ${(a.validation_accuracy * 100).toFixed(1)}%`})`,
      a.name ?? "");
    select.append(option);
  }
  for (const name of info.available) {
    if (!names.has(name)) select.append(new Option(`${name} (loads on first use)`, name));
  }
  loadedNames = info.loaded.map((a) => a.name);
}

async function loadExamples() {
  const select = $("example");
  const examples = {};
  for (const dataset of ["arc_easy", "medmcqa"]) {
    const rows = await api(`/v1/examples?dataset=${dataset}&limit=25`);
    const group = document.createElement("optgroup");
    group.label = dataset;
    rows.forEach((row, i) => {
      const key = `${dataset}:${i}`;
      examples[key] = row;
      group.append(new Option(row.question.slice(0, 80), key));
    });
    select.append(group);
  }
  select.addEventListener("change", () => {
    const row = examples[select.value];
    knownAnswer = row ? row.answer : null;
    if (!row) return;
    $("question").value = row.question;
    setChoices(row.choices);
  });
  $("question").addEventListener("input", () => { knownAnswer = null; select.value = ""; });
}

function init() {
  setChoices(["", "", "", ""]);
  $("add-choice").addEventListener("click", () => addChoice().focus());
  $("question-form").addEventListener("submit", submit);
  setUpTabs();
  Promise.all([loadAdapters(), loadExamples()]).then(
    () => { document.body.dataset.ready = "true"; },
    (e) => { $("error").textContent = e.message; $("error").hidden = false; });
}

init();
