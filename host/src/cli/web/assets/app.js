// The pages of `contextstore serve`: they poll the JSON API and fill
// themselves in. Every text from the store goes in as text (textContent,
// setAttribute): none is ever parsed as markup.
'use strict';

(function () {
  const POLL_MS = 1000;
  const RUNS_POLL_MS = 2000;
  const TIMEOUT_MS = 5000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  /** An element with attributes and, optionally, text. */
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /** An SVG element with attributes. */
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, String(value));
    }
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function td(text, attrs) {
    return el('td', attrs, text);
  }

  /** GETs JSON, giving up after TIMEOUT_MS. */
  async function getJSON(url) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(url, {
        signal: abort.signal,
        headers: { accept: 'application/json' },
        cache: 'no-store',
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.error || 'HTTP ' + response.status);
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  function setStatus(text, bad) {
    const status = document.getElementById('status');
    status.textContent = text;
    status.classList.toggle('bad', Boolean(bad));
  }

  /** Calls `step` now and again `every` ms after each call ends. */
  function poll(step, every) {
    const loop = async () => {
      try {
        await step();
        setStatus('live · updated ' + fmtTime(Date.now()).slice(11));
      } catch (error) {
        setStatus('cannot read the store: ' + error.message, true);
      }
      setTimeout(loop, every);
    };
    loop();
  }

  /** A time as local `YYYY-MM-DD HH:MM:SS`. */
  function fmtTime(ms) {
    if (ms === null || ms === undefined) return '–';
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' +
      p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms < 1000) return ms + ' ms';
    const s = ms / 1000;
    if (s < 120) return s.toFixed(1) + ' s';
    const m = s / 60;
    if (m < 120) return m.toFixed(1) + ' min';
    return (m / 60).toFixed(1) + ' h';
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return '–';
    if (n < 1024) return n + ' B';
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB';
    return (n / 1024 / 1024).toFixed(1) + ' MiB';
  }

  function shorten(text, max) {
    return text.length > max ? text.slice(0, max - 1) + '…' : text;
  }

  // ---- the runs ----------------------------------------------------------

  function runsPage() {
    const state = new URLSearchParams(location.search).get('state') || '';
    for (const link of document.querySelectorAll('#filters a')) {
      link.classList.toggle('active', link.dataset.state === state);
    }
    const url = '/api/runs' + (state ? '?state=' + encodeURIComponent(state) : '');
    poll(async () => renderRuns(await getJSON(url)), RUNS_POLL_MS);
  }

  function renderRuns(data) {
    const rows = data.runs.map((run) => {
      const row = el('tr', { 'data-run': run.flow_run_id, 'data-state': run.state });
      const link = el('a', { href: '/runs/' + encodeURIComponent(run.flow_run_id) }, run.flow_run_id);
      const first = el('td', { class: 'id' });
      first.append(link);
      const took = (run.ended_at === null ? data.now : run.ended_at) - run.started_at;
      row.append(
        first,
        td(run.flow_name),
        td(run.state, { class: 'state state-' + run.state }),
        td(run.nodes.done + ' / ' + run.nodes.total),
        td(run.nodes.failed),
        td(run.nodes.retrying),
        td(run.workers + ' (' + run.live_workers + ')'),
        td(fmtTime(run.started_at)),
        td(fmtDuration(Math.max(0, took)) + (run.ended_at === null ? ' so far' : '')),
        td(run.failed_attempts),
        td(run.taken_over),
      );
      return row;
    });
    document.querySelector('#runs tbody').replaceChildren(...rows);
    document.getElementById('empty').hidden = rows.length > 0;
    if (data.total > data.runs.length) {
      document.getElementById('empty').hidden = false;
      document.getElementById('empty').textContent =
        'Showing the newest ' + data.runs.length + ' of ' + data.total + ' runs.';
    }
  }

  // ---- one run -----------------------------------------------------------

  /** Each node's layer: the longest path to it from a root. */
  function layers(nodes) {
    const byName = new Map(nodes.map((n) => [n.name, n]));
    const layer = new Map();
    const visiting = new Set();
    const depth = (name) => {
      if (layer.has(name)) return layer.get(name);
      const node = byName.get(name);
      if (!node || visiting.has(name)) return 0;
      visiting.add(name);
      let d = 0;
      for (const up of node.upstream) if (byName.has(up)) d = Math.max(d, depth(up) + 1);
      visiting.delete(name);
      layer.set(name, d);
      return d;
    };
    for (const n of nodes) depth(n.name);
    return layer;
  }

  const BOX_W = 170;
  const BOX_H = 46;
  const GAP_X = 70;
  const GAP_Y = 22;
  const PAD = 12;

  /** Draws the graph (once per set of nodes): boxes in layers, edges as curves. */
  function drawGraph(nodes, onSelect) {
    const layer = layers(nodes);
    const columns = [];
    for (const n of nodes) {
      const l = layer.get(n.name) || 0;
      (columns[l] = columns[l] || []).push(n);
    }
    const place = new Map();
    columns.forEach((column, x) => {
      (column || []).forEach((n, y) => {
        place.set(n.name, {
          x: PAD + x * (BOX_W + GAP_X),
          y: PAD + y * (BOX_H + GAP_Y),
        });
      });
    });
    const rows = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
    // An edge that skips a layer bows below the boxes it passes.
    const DIP = BOX_H / 2 + GAP_Y;
    const skips = nodes.some((n) => n.upstream.some((up) =>
      (layer.get(n.name) || 0) - (layer.get(up) || 0) > 1));
    const width = PAD * 2 + columns.length * (BOX_W + GAP_X) - GAP_X;
    const height = PAD * 2 + rows * (BOX_H + GAP_Y) - GAP_Y + (skips ? DIP : 0);
    const root = svg('svg', {
      id: 'graph-svg',
      width: Math.max(width, 200),
      height,
      viewBox: '0 0 ' + Math.max(width, 200) + ' ' + height,
      role: 'img',
      'aria-label': 'the run\'s nodes and their edges',
    });
    const defs = svg('defs');
    const marker = svg('marker', {
      id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse',
    });
    marker.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }));
    defs.append(marker);
    root.append(defs);
    const edges = svg('g', { class: 'edges' });
    for (const n of nodes) {
      const to = place.get(n.name);
      for (const up of n.upstream) {
        const from = place.get(up);
        if (!from || !to) continue;
        const x1 = from.x + BOX_W;
        const y1 = from.y + BOX_H / 2;
        const x2 = to.x;
        const y2 = to.y + BOX_H / 2;
        const mid = (x1 + x2) / 2;
        const skip = (layer.get(n.name) || 0) - (layer.get(up) || 0) > 1;
        const d = skip
          ? `M${x1},${y1} C${x1 + GAP_X},${y1 + DIP * 1.5} ${x2 - GAP_X},${y2 + DIP * 1.5} ${x2},${y2}`
          : `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
        edges.append(svg('path', {
          class: 'edge',
          d,
          'marker-end': 'url(#arrow)',
          'data-from': up,
          'data-to': n.name,
        }));
      }
    }
    root.append(edges);
    const boxes = new Map();
    for (const n of nodes) {
      const at = place.get(n.name);
      const group = svg('g', {
        class: 'node state-pending',
        'data-node': n.name,
        transform: `translate(${at.x},${at.y})`,
        tabindex: 0,
      });
      group.append(svg('title', {}, n.name));
      group.append(svg('rect', { width: BOX_W, height: BOX_H, rx: 6, ry: 6 }));
      group.append(svg('text', { class: 'name', x: 10, y: 19 }, shorten(n.name, 22)));
      const state = svg('text', { class: 'node-state', x: 10, y: 37 }, '…');
      group.append(state);
      group.addEventListener('click', () => onSelect(n.name));
      group.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') onSelect(n.name);
      });
      boxes.set(n.name, { group, state });
    }
    for (const { group } of boxes.values()) root.append(group);
    document.getElementById('graph').replaceChildren(root);
    return boxes;
  }

  function stateText(node) {
    if (node.state === 'done' && node.warning) return 'done (warning)';
    if (node.state === 'retrying') return 'retrying (attempt ' + node.attempts + ' failed)';
    return node.state;
  }

  function provenanceText(p) {
    if (!p) return '–';
    return p.host + ' · attempt ' + p.attempt + ' · ' + p.component_hash.slice(0, 12);
  }

  function detailText(node, now) {
    if (node.warning) return 'warning: ' + node.warning;
    if (node.state === 'retrying' && node.retry_at !== null) {
      const left = Math.max(0, node.retry_at - now);
      return 'next attempt in ' + fmtDuration(left) + ': ' + (node.error || '');
    }
    return node.error || '';
  }

  function outputCell(run, node) {
    const cell = el('td', { class: 'output' });
    if (node.output_bytes === null) {
      cell.textContent = '–';
    } else {
      cell.append(el('a', {
        href: '/runs/' + encodeURIComponent(run) + '/nodes/' +
          encodeURIComponent(node.node_id) + '/output',
      }, fmtBytes(node.output_bytes)));
    }
    return cell;
  }

  function runPage() {
    const id = decodeURIComponent(location.pathname.split('/')[2] || '');
    document.getElementById('run-id').textContent = id;
    let graphKey = null;
    let boxes = new Map();
    let selected = null;
    let chosen = false;
    let last = null;
    const select = (name) => {
      selected = name;
      chosen = true;
      if (last) renderRun(last);
    };
    const renderRun = (data) => {
      last = data;
      const run = data.run;
      document.title = run.flow_name + ' · ' + run.state + ' · contextstore';
      document.getElementById('crumb').textContent = run.flow_name + ' ' + run.flow_run_id;
      document.getElementById('flow-name').textContent = run.flow_name;
      const badge = document.getElementById('run-state');
      badge.textContent = run.state;
      badge.className = 'state state-' + run.state;
      const n = run.nodes;
      const ended = run.ended_at === null
        ? 'last active ' + fmtTime(run.last_active_at)
        : 'ended ' + fmtTime(run.ended_at) + ' (took ' + fmtDuration(run.ended_at - run.started_at) + ')';
      document.getElementById('summary').textContent =
        n.done + ' of ' + n.total + ' nodes done · ' + n.failed + ' failed · ' +
        n.retrying + ' retrying · ' + n.running + ' running · ' + n.pending + ' pending · ' +
        run.workers + ' worker(s), ' + run.live_workers + ' live · ' +
        run.failed_attempts + ' failed attempt(s) · ' + run.taken_over + ' claim(s) taken over · ' +
        'started ' + fmtTime(run.started_at) + ' · ' + ended;

      const key = JSON.stringify(data.nodes.map((x) => [x.name, x.upstream]));
      if (key !== graphKey) {
        boxes = drawGraph(data.nodes, select);
        graphKey = key;
      }
      if (!chosen) {
        const failed = data.nodes.find((x) => x.state === 'failed' || x.state === 'retrying');
        selected = failed ? failed.name : null;
      }
      const rows = [];
      for (const node of data.nodes) {
        const box = boxes.get(node.name);
        if (box) {
          box.group.setAttribute('class', 'node state-' + node.state +
            (node.name === selected ? ' selected' : ''));
          box.state.textContent = stateText(node);
        }
        const row = el('tr', {
          'data-node': node.name,
          class: node.name === selected ? 'selected' : null,
        });
        const name = el('td', { class: 'name' });
        const pick = el('button', { type: 'button', class: 'link' }, node.name);
        pick.addEventListener('click', () => select(node.name));
        name.append(pick);
        row.append(
          name,
          td(stateText(node), { class: 'state state-' + node.state, 'data-state': node.state }),
          td(node.attempts),
          td((node.worker || '–') + (node.lease_live ? ' (running)' : '')),
          td(fmtDuration(node.duration_ms)),
          outputCell(run.flow_run_id, node),
          td(provenanceText(node.provenance), { class: 'provenance' }),
          td(detailText(node, data.now), { class: 'detail-cell' }),
        );
        rows.push(row);
      }
      document.querySelector('#nodes tbody').replaceChildren(...rows);
      renderDetail(run, data.nodes.find((x) => x.name === selected), data.now);
    };
    poll(async () => renderRun(await getJSON('/api/runs/' + encodeURIComponent(id))), POLL_MS);
  }

  function renderDetail(run, node, now) {
    const section = document.getElementById('detail');
    if (!node) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    document.getElementById('detail-name').textContent = node.name;
    const state = document.getElementById('detail-state');
    state.textContent = stateText(node);
    state.className = 'state state-' + node.state;
    const p = node.provenance;
    const fields = [
      ['node id', node.node_id],
      ['component', node.component || '–'],
      ['upstream', node.upstream.length ? node.upstream.join(', ') : '–'],
      ['attempts', node.attempts],
      ['error', node.error],
      ['warning', node.warning],
      ['next attempt', node.retry_at === null ? null :
        fmtTime(node.retry_at) + ' (in ' + fmtDuration(Math.max(0, node.retry_at - now)) + ')'],
      ['worker', node.worker ? node.worker + (node.lease_live ? ' (lease live)' : '') : null],
      ['output', node.output_bytes === null ? null : fmtBytes(node.output_bytes)],
      ['started', p ? fmtTime(p.started_at) : null],
      ['ended', p ? fmtTime(p.ended_at) : null],
      ['duration', p ? fmtDuration(node.duration_ms) : null],
      ['host', p ? p.host : null],
      ['component hash', p ? p.component_hash : null],
      ['params hash', p ? p.params_hash : null],
      ['upstream hash', p ? p.upstream_hash : null],
    ];
    const list = [];
    for (const [name, value] of fields) {
      if (value === null || value === undefined) continue;
      list.push(el('dt', {}, name));
      const dd = el('dd', { 'data-field': name, class: name === 'error' ? 'error' : null }, value);
      list.push(dd);
    }
    if (node.output_bytes !== null) {
      list.push(el('dt', {}, 'view'));
      const dd = el('dd');
      dd.append(el('a', {
        href: '/runs/' + encodeURIComponent(run.flow_run_id) + '/nodes/' +
          encodeURIComponent(node.node_id) + '/output',
      }, 'the output as JSON'));
      list.push(dd);
    }
    document.getElementById('detail-fields').replaceChildren(...list);
    const failures = node.failures.map((f) => el('li', { value: f.attempt }, 'attempt ' + f.attempt + ': ' + f.error));
    document.getElementById('detail-failures').replaceChildren(...failures);
    document.getElementById('detail-no-failures').hidden = failures.length > 0;
  }

  document.addEventListener('DOMContentLoaded', () => {
    const page = document.body.dataset.page;
    if (page === 'runs') runsPage();
    if (page === 'run') runPage();
  });
})();
