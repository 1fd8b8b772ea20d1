// DFC dashboard: polls the coordinator's JSON and renders with DOM calls
// (text never becomes markup). No external scripts.
'use strict';

const app = document.getElementById('app');
const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
const MODELS = {MODEL_UNSPECIFIED: '?', MESOINCEPTION4: 'MesoInception-4', MESO4: 'Meso-4', RESNET50_VGGFACE: 'ResNet-50 (VGGFace)'};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}
function svg(tag, attrs, ...children) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}
function num(v) { return v === undefined || v === null || v === '' ? 0 : Number(v); }
function fixed(v, d) { return num(v).toFixed(d); }
function when(ms) { ms = num(ms); return ms ? new Date(ms).toLocaleString() : '—'; }
function ago(ms) {
  ms = num(ms); if (!ms) return '—';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}
function stateBadge(s) { return el('span', {class: `state state-${s}`, 'data-state': s}, s); }
function progressBar(done, total) {
  const pct = total > 0 ? Math.min(100, 100 * done / total) : 0;
  const bar = el('span', {class: 'bar', title: `${done} of ${total} epochs`}, el('span'));
  bar.firstChild.style.width = `${pct}%`;
  return el('span', {}, bar, ` ${done}/${total}`);
}
async function getJson(path) {
  const r = await fetch(path, {credentials: 'same-origin', cache: 'no-store'});
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}: ${(await r.text()).trim()}`);
  return r.json();
}
function stamp() { document.getElementById('updated').textContent = `updated ${new Date().toLocaleTimeString()}`; }

function jobsTable(jobs) {
  const head = el('tr', {}, ...['Job', 'State', 'Model', 'Ranks', 'Progress', 'Images/s', 'Val acc', 'Val AUC',
                                'Submitted', 'Reason'].map(h => el('th', {}, h)));
  const rows = jobs.map(j => {
    const last = j.last_epoch || {};
    const epochs = num(j.config && j.config.epochs);
    return el('tr', {'data-job': j.job_id},
      el('td', {}, el('a', {href: `/jobs/${encodeURIComponent(j.job_id)}`}, j.job_id)),
      el('td', {}, stateBadge(j.state)),
      el('td', {}, MODELS[j.config && j.config.model] || (j.config && j.config.model) || ''),
      el('td', {class: 'num'}, j.world_size),
      el('td', {}, !num(j.epochs_done) && num(j.selection_epochs_done) ?  // choosing the epoch count (notebook recipe)
          el('span', {class: 'selecting'}, 'selection ', progressBar(num(j.selection_epochs_done), epochs)) :
          progressBar(num(j.epochs_done), epochs)),
      el('td', {class: 'num'}, num(last.images_per_second) ? fixed(last.images_per_second, 1) : '—'),
      el('td', {class: 'num'}, num(j.epochs_done) ? fixed(last.val_accuracy, 4) : '—'),
      el('td', {class: 'num'}, num(j.epochs_done) ? fixed(last.val_auc, 4) : '—'),
      el('td', {}, when(j.created_unix_ms)),
      el('td', {class: 'muted'}, j.waiting && j.waiting.reason ? `#${j.waiting.position}: ${j.waiting.reason}` : (j.reason || '')));
  });
  return el('table', {id: 'jobs'}, head, ...rows);
}

function workersTable(workers) {
  const head = el('tr', {}, ...['Worker', 'Address', 'State', 'Slots', 'Free', 'GPUs', 'Ranks', 'Last heartbeat']
    .map(h => el('th', {}, h)));
  const rows = workers.map(w => el('tr', {'data-worker': w.worker_id},
    el('td', {}, w.worker_id), el('td', {}, w.address),
    el('td', {class: `state-${w.state}`}, w.state),
    el('td', {class: 'num'}, w.slots), el('td', {class: 'num'}, w.state === 'gone' || w.state === 'left' ? '—' : w.free_slots),
    el('td', {class: 'num'}, w.gpus),
    el('td', {}, (w.ranks || []).map(r => `${r.job_id}/${r.rank}`).join(', ') || '—'),
    el('td', {class: 'num'}, `${fixed(w.seconds_since_heartbeat, 1)} s`)));
  return el('table', {id: 'workers'}, head, ...rows);
}

async function overview() {
  const [jobs, workers] = await Promise.all([getJson('/api/jobs'), getJson('/api/workers')]);
  const j = jobs.jobs || [], w = workers.workers || [];
  app.replaceChildren(
    el('h2', {}, `Jobs (${j.length})`), j.length ? jobsTable(j) : el('p', {class: 'muted'}, 'No jobs yet: dfc submit …'),
    el('h2', {}, `Workers (${w.filter(x => x.state === 'live').length} live)`),
    w.length ? workersTable(w) : el('p', {class: 'muted'}, 'No workers have registered.'));
  stamp();
  return true;
}

// One learning curve: epochs on x, up to two series on y.
function chart(metric, title, series, epochs) {
  const W = 340, H = 190, L = 44, R = 10, T = 10, B = 26;
  const values = series.flatMap(s => epochs.map(e => num(e[s.key])));
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!isFinite(lo)) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const n = epochs.length;
  const x = i => L + (n <= 1 ? (W - L - R) / 2 : i * (W - L - R) / (n - 1));
  const y = v => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  const g = svg('svg', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: 'curve', 'data-metric': metric,
                       'data-points': n, role: 'img', 'aria-label': title});
  g.append(svg('line', {x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis'}),
           svg('line', {x1: L, y1: T, x2: L, y2: H - B, class: 'axis'}),
           svg('text', {x: 2, y: T + 8, class: 'tick'}, hi.toPrecision(3)),
           svg('text', {x: 2, y: H - B, class: 'tick'}, lo.toPrecision(3)),
           svg('text', {x: L, y: H - 8, class: 'tick'}, n ? `epoch ${epochs[0].epoch}` : 'no epoch yet'),
           svg('text', {x: W - R - 50, y: H - 8, class: 'tick'}, n ? `epoch ${epochs[n - 1].epoch}` : ''));
  series.forEach((s, k) => {
    const pts = epochs.map((e, i) => `${x(i).toFixed(1)},${y(num(e[s.key])).toFixed(1)}`).join(' ');
    g.append(svg('polyline', {points: pts, class: `s${k}`, 'data-series': s.key}));
    epochs.forEach((e, i) => g.append(svg('circle', {cx: x(i), cy: y(num(e[s.key])), r: 3, class: `point s${k}`,
                                                     'data-series': s.key, 'data-epoch': e.epoch},
                                          svg('title', {}, `epoch ${e.epoch}: ${s.label} ${fixed(e[s.key], 4)}`))));
  });
  const legend = el('div', {class: 'legend'}, ...series.map((s, k) => el('span', {class: `s${k}`}, `■ ${s.label}`)));
  return el('div', {class: 'chart'}, el('h3', {}, title), g, legend);
}

async function jobPage(id) {
  const j = await getJson(`/api/jobs/${encodeURIComponent(id)}`);
  const epochs = j.epochs || [];
  const c = j.config || {};
  const p = j.progress || {};
  const parts = [
    el('h2', {}, 'Job ', el('span', {id: 'job-id'}, j.job_id), ' ', stateBadge(j.state)),
  ];
  if (j.state === 'FAILED' || j.state === 'CANCELLED' || (j.reason && !TERMINAL.has(j.state))) {
    if (j.reason) parts.push(el('div', {class: 'reason', id: 'reason'}, j.reason));
  }
  if (j.waiting && j.waiting.reason) {
    parts.push(el('div', {class: 'waiting'}, `Queue position ${j.waiting.position}: ${j.waiting.reason}`));
  }
  // --recipe notebook: an epoch-count selection (selection_epochs, progress
  // phase "selection"), then a retraining for the chosen count.
  const selection = j.selection_epochs || [];
  const notebook = c.recipe === 'notebook';
  const limit = !notebook ? num(c.epochs) : !p.phase && num(p.epochs) ? num(p.epochs) : epochs.length;
  const running = j.state === 'RUNNING' && num(p.steps) > 0 ?
      `${p.phase ? p.phase + ' ' : ''}epoch ${p.epoch}: step ${p.step}/${p.steps}, loss ${fixed(p.loss, 4)}, ` +
      `acc ${fixed(p.accuracy, 4)}` : '—';
  parts.push(el('dl', {class: 'kv'},
    el('dt', {}, 'Model'), el('dd', {}, MODELS[c.model] || c.model),
    el('dt', {}, 'Data'), el('dd', {}, c.data),
    el('dt', {}, 'Ranks'), el('dd', {}, `${j.world_size} on ${(j.workers || []).join(', ') || '—'}`),
    ...(notebook ? [el('dt', {}, 'Selection'), el('dd', {id: 'selection'}, progressBar(selection.length, num(c.epochs)))] : []),
    el('dt', {}, 'Epochs'), el('dd', {id: 'epochs'}, progressBar(epochs.length, limit)),
    el('dt', {}, 'Now'), el('dd', {}, running),
    el('dt', {}, 'Restarts'), el('dd', {}, `${j.restarts} of ${j.max_restarts}`),
    el('dt', {}, 'Submitted'), el('dd', {}, when(j.created_unix_ms)),
    el('dt', {}, 'Output'), el('dd', {}, j.output_dir)));
  parts.push(el('h2', {}, 'Learning curves'), el('div', {class: 'charts'},
    chart('loss', 'Loss', [{key: 'loss', label: 'train'}, {key: 'val_loss', label: 'validation'}], epochs),
    chart('accuracy', 'Accuracy', [{key: 'accuracy', label: 'train'}, {key: 'val_accuracy', label: 'validation'}], epochs),
    chart('auc', 'Validation AUC', [{key: 'val_auc', label: 'validation'}], epochs),
    chart('throughput', 'Images/s', [{key: 'images_per_second', label: 'all ranks'}], epochs)));
  if (selection.length) {
    parts.push(el('h2', {}, 'Epoch-count selection (50/50 split of the training split)'), el('div', {class: 'charts'},
      chart('sel-loss', 'Loss', [{key: 'loss', label: 'train'}, {key: 'val_loss', label: 'validation'}], selection),
      chart('sel-accuracy', 'Accuracy', [{key: 'accuracy', label: 'train'}, {key: 'val_accuracy', label: 'validation'}],
            selection)));
  }
  if (epochs.length) {
    const last = epochs[epochs.length - 1];
    parts.push(el('p', {class: 'muted'}, `Last epoch step time: data wait ${fixed(1000 * num(last.step_data_seconds), 1)} ms, ` +
      `compute ${fixed(1000 * num(last.step_compute_seconds), 1)} ms, all-reduce wait ${fixed(1000 * num(last.step_allreduce_wait_seconds), 1)} ms`));
  }
  const failures = j.failures || [];
  if (failures.length) {
    parts.push(el('h2', {}, 'Failed attempts'), el('table', {id: 'failures'},
      el('tr', {}, el('th', {}, 'Attempt'), el('th', {}, 'When'), el('th', {}, 'Reason')),
      ...failures.map(f => el('tr', {}, el('td', {}, f.attempt), el('td', {}, when(f.unix_ms)),
                               el('td', {}, f.reason + (f.permanent ? ' (permanent: not retried)' : ''))))));
  }
  const events = j.events || [];
  parts.push(el('h2', {}, 'Events'), el('table', {id: 'events'},
    el('tr', {}, el('th', {}, 'When'), el('th', {}, 'Attempt'), el('th', {}, 'Event'), el('th', {}, 'Detail')),
    ...events.slice().reverse().map(e => el('tr', {'data-kind': e.kind}, el('td', {}, ago(e.unix_ms)),
      el('td', {class: 'num'}, e.attempt), el('td', {}, e.kind), el('td', {}, e.message)))));
  parts.push(el('p', {}, el('a', {href: '/'}, '← all jobs')));
  app.replaceChildren(...parts);
  document.title = `${j.job_id} ${j.state} · DFC`;
  stamp();
  return !TERMINAL.has(j.state);
}

async function tick() {
  const m = location.pathname.match(/^\/jobs\/(.+)$/);
  let again = true;
  try {
    again = m ? await jobPage(decodeURIComponent(m[1])) : await overview();
  } catch (err) {
    app.replaceChildren(el('div', {class: 'reason', id: 'error'}, String(err.message || err)));
  }
  if (again) setTimeout(tick, 2000);
}
tick();
