// The candidate page. It uses only the public API, with relative URLs (so only this server),
// and builds every element with textContent: candidate text is never parsed as HTML.
"use strict";

const KEY_STORE = "bon-api-key";
const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem(KEY_STORE) || "";

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, body) {
  const headers = {};
  if (apiKey) headers.Authorization = "Bearer " + apiKey;
  const init = { headers, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    // not JSON: the status says enough
  }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || response.statusText;
    throw new ApiError(response.status, `${response.status}: ${message}`);
  }
  return data;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const answerLabel = (a) => (a === null || a === undefined ? "(no answer)" : a);

// ------------------------------------------------------------------ connecting, the key

async function connect() {
  try {
    const models = await api("/v1/models");
    $("key-panel").hidden = true;
    $("main").hidden = false;
    const model = models.data && models.data[0] ? models.data[0].id : "?";
    $("served").textContent = `serving ${model}`;
    return true;
  } catch (err) {
    if (err.status === 401) {
      $("main").hidden = true;
      $("key-panel").hidden = false;
      $("served").textContent = "";
      $("key-error").textContent = apiKey ? "That key was not accepted." : "";
      $("api-key").focus();
      return false;
    }
    $("served").textContent = `cannot reach the API: ${err.message}`;
    return false;
  }
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORE, apiKey);
  $("api-key").value = "";
  await connect();
});

// ------------------------------------------------------------------ asking

$("new-problem").addEventListener("click", async () => {
  $("error").textContent = "";
  try {
    const card = await api("/v1/bon/problem");
    $("prompt").value = card.prompt;
    $("status").textContent = `a fresh ${card.world} problem (seed ${card.seed})`;
  } catch (err) {
    $("error").textContent = err.message;
    if (err.status === 401) await connect();
  }
});

function requestBody() {
  const body = {
    messages: [{ role: "user", content: $("prompt").value }],
    n: 1,
    best_of: Number($("best-of").value),
    return_candidates: true,
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
  if ($("selector").value) body.selector = $("selector").value;
  if ($("aggregation").value) body.prm_aggregation = $("aggregation").value;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  $("run").disabled = true;
  $("status").textContent = "sampling…";
  const started = performance.now();
  try {
    const response = await api("/v1/chat/completions", requestBody());
    const seconds = (performance.now() - started) / 1000;
    render(response, seconds);
    $("status").textContent = "";
  } catch (err) {
    $("status").textContent = "";
    $("error").textContent = err.message;
    if (err.status === 401) await connect();
  } finally {
    $("run").disabled = false;
  }
});

// ------------------------------------------------------------------ the result

function votes(candidates) {
  const counts = new Map();
  for (const c of candidates) {
    const key = answerLabel(c.answer);
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  // most votes first; equal counts keep the order the answers first appeared in
  return [...counts.entries()].sort((a, b) => b[1] - a[1]);
}

// Why the chosen candidate won, in words, from what the response reports.
function ruleInWords(bon, candidates, chosen) {
  const c = candidates[chosen];
  const n = candidates.length;
  const same = candidates.filter((x) => x.answer === c.answer).length;
  const answer = answerLabel(c.answer);
  switch (bon.selector) {
    case "majority":
      return `Majority vote: answer ${answer} was given by ${same} of ${n} candidates, ` +
        `more than any other; candidate #${chosen} is the first that gave it.`;
    case "weighted_majority":
      return `Weighted majority: answer ${answer} holds ${fmt(100 * c.score, 1)}% of the ` +
        `verifier's total score over ${n} candidates (${same} gave it); candidate #${chosen} ` +
        `has the highest verifier score among them (${fmt(c.verifier_score)}).`;
    case "verifier": {
      const how = bon.prm_aggregation
        ? ` (the PRM's step scores, aggregated by ${bon.prm_aggregation})` : "";
      return `Verifier: candidate #${chosen} has the highest verifier score${how}, ` +
        `${fmt(c.verifier_score)}, of ${n} candidates.`;
    }
    case "logprob":
      return `Log-probability: candidate #${chosen} has the highest mean token ` +
        `log-probability, ${fmt(c.score)}, of ${n} candidates.`;
    default:
      return `Selector ${bon.selector}: candidate #${chosen} ranked first.`;
  }
}

// 0 -> red, 0.5 -> yellow, 1 -> green
const tint = (score) => `hsl(${Math.round(120 * Math.min(1, Math.max(0, score)))}, 75%, 85%)`;

function candidateCard(c, isChosen) {
  const card = el("article", isChosen ? "candidate chosen" : "candidate");
  card.dataset.index = String(c.index);
  const head = el("div", "head");
  head.append(el("span", null, `#${c.index}`));
  if (isChosen) head.append(el("span", "badge", "chosen"));
  card.append(head);

  const facts = el("dl", "facts");
  const rows = [
    ["answer", answerLabel(c.answer)],
    ["score", fmt(c.score)],
    ["verifier", fmt(c.verifier_score)],
    ["tokens", c.completion_tokens],
    ["finish", c.finish_reason],
  ];
  for (const [name, value] of rows) {
    facts.append(el("dt", null, name), el("dd", `fact-${name}`, value));
  }
  card.append(facts);

  if (c.steps) {
    const steps = el("div", "steps");
    for (const step of c.steps) {
      const row = el("div", "step");
      row.append(el("span", "step-text", step.text), el("span", "step-score", fmt(step.score, 2)));
      if (step.score !== null) {
        row.style.backgroundColor = tint(step.score);
        row.dataset.score = String(step.score);
        row.title = `PRM step score ${fmt(step.score)}`;
      } else {
        row.title = "not scored: cut from a text longer than the PRM's context";
      }
      steps.append(row);
    }
    card.append(steps);
  } else {
    card.append(el("pre", "text", c.text));
  }
  return card;
}

function render(response, seconds) {
  const bon = response.bon;
  const candidates = bon.candidates || [];
  const chosen = bon.chosen[0];
  $("result").hidden = false;
  $("rule").textContent = ruleInWords(bon, candidates, chosen);
  const u = response.usage;
  $("usage").textContent = `${candidates.length} candidates, ${u.completion_tokens} completion ` +
    `tokens in all (prompt ${u.prompt_tokens}), ${seconds.toFixed(2)} s`;

  const chart = $("votes");
  chart.replaceChildren();
  const chosenAnswer = answerLabel(candidates[chosen].answer);
  for (const [answer, count] of votes(candidates)) {
    const track = el("div", "vote-track");
    const bar = el("div", answer === chosenAnswer ? "vote-bar chosen" : "vote-bar");
    bar.style.width = `${(100 * count) / candidates.length}%`;
    bar.dataset.count = String(count);
    track.append(bar);
    const share = Math.round((100 * count) / candidates.length);
    chart.append(el("div", "vote-answer", answer), track,
      el("div", "vote-count", `${count} (${share}%)`));
  }

  const grid = $("candidates");
  grid.replaceChildren(...candidates.map((c) => candidateCard(c, c.index === chosen)));
}

connect();
