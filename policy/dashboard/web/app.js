// shiftplane dashboard: renders the data the page carries, then every copy
// the server streams (/api/dashboard/stream, server-sent events). Text goes
// into the DOM as text, never as HTML.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';

  function el(ns, tag, attrs, kids) {
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of [].concat(kids || [])) {
      if (c === null || c === undefined || c === false) continue;
      e.append(typeof c === 'string' || typeof c === 'number' ? String(c) : c);
    }
    return e;
  }
  const h = (tag, attrs, kids) => el(null, tag, attrs, kids);
  const s = (tag, attrs, kids) => el(SVG, tag, attrs, kids);

  let data = JSON.parse($('data').textContent);
  const pageName = location.pathname.startsWith('/rollouts/') ? decodeURIComponent(location.pathname.slice(10)) : '';
  const openDetails = new Set();
  let actionMsg = null;

  function fmtDur(ms) {
    if (ms <= 0) return '0s';
    const sec = Math.round(ms / 1000);
    if (sec < 60) return sec + 's';
    const m = Math.floor(sec / 60), r = sec % 60;
    if (m < 60) return m + 'm' + (r ? r + 's' : '');
    return Math.floor(m / 60) + 'h' + (m % 60 ? (m % 60) + 'm' : '');
  }
  const fmtTime = (t) => new Date(t).toLocaleTimeString([], { hour12: false });
  const ago = (t) => (t ? fmtDur(data.now - t) + ' ago' : '—');
  const phaseBadge = (p, id) => h('span', { class: 'badge ph-' + p, id, text: p });
  const sigBadge = (sg) => h('span', { class: 'badge sig-' + sg, text: sg });
  const stepText = (r) => (r.stepCount ? r.step + '/' + r.stepCount : '-');
  function bar(w) {
    const fill = h('span');
    fill.style.width = w + '%';
    return h('span', { class: 'bar' }, fill);
  }

  function render() {
    renderWho();
    const main = $('main');
    const body = pageName ? renderRollout() : renderList();
    main.replaceChildren(...body);
  }

  function renderWho() {
    const a = data.auth;
    const who = $('who');
    const key = JSON.stringify([a.canAct, a.via, a.logout, a.login]);
    if (who.dataset.key === key) return;
    who.dataset.key = key;
    const kids = [];
    if (a.canAct) kids.push(h('span', { text: 'actions enabled (' + a.via + ') ' }));
    else kids.push(h('span', { text: 'read-only ' }));
    if (a.login) {
      const failed = new URLSearchParams(location.search).get('login') === 'failed';
      kids.push(h('form', { class: 'login', method: 'post', action: '/login', id: 'login' }, [
        h('input', { type: 'hidden', name: 'next', value: location.pathname }),
        h('input', { type: 'password', name: 'token', placeholder: 'policy API token', autocomplete: 'current-password', required: true }),
        h('button', { type: 'submit', text: 'log in' }),
        failed ? h('span', { class: 'bad', text: 'wrong token' }) : null,
      ]));
    }
    if (a.logout) kids.push(h('form', { method: 'post', action: '/logout', class: 'inline' }, h('button', { type: 'submit', text: 'log out' })));
    who.replaceChildren(...kids);
    const crumbs = $('crumbs');
    crumbs.replaceChildren(...(pageName ? [h('a', { href: '/', text: 'rollouts' }), ' / ', pageName] : []));
  }

  // ---- list ----
  function renderList() {
    const out = [h('h1', {}, 'Rollouts'), h('p', { class: 'muted', text: data.nodes + ' Envoy node(s) connected over xDS' })];
    const rows = data.rollouts.map((r) =>
      h('tr', { class: 'row', 'data-name': r.name, onclick: () => (location.href = '/rollouts/' + encodeURIComponent(r.name)) }, [
        h('td', {}, h('a', { href: '/rollouts/' + encodeURIComponent(r.name), text: r.name })),
        h('td', {}, phaseBadge(r.phase)),
        h('td', { class: 'weight' }, [bar(r.weight), r.weight + '%']),
        h('td', { class: 'observed muted', text: r.observed || '—' }),
        h('td', { class: 'step', text: stepText(r) }),
        h('td', {}, sigBadge(r.signal)),
        h('td', {}, r.nacks && r.nacks.length ? h('span', { class: 'bad', text: 'NACK' }) : r.converged ? h('span', { class: 'ok', text: '✓ ' + r.fleetNodes }) : h('span', { class: 'muted', text: 'waiting (' + r.fleetNodes + ')' })),
        h('td', { class: 'muted', text: r.reason }),
      ]));
    if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 8, class: 'muted', text: 'no rollouts yet: apply a plan with shiftctl apply -f PLAN or serve --plan DIR' })));
    out.push(h('table', { id: 'rollouts' }, [
      h('thead', {}, h('tr', {}, ['rollout', 'phase', 'canary weight', 'observed (this step)', 'step', 'signal', 'fleet', 'reason'].map((t) => h('th', { text: t })))),
      h('tbody', {}, rows),
    ]));
    if (data.snapshots && data.snapshots.length) {
      out.push(h('h2', { text: 'Recent xDS snapshots' }));
      out.push(h('table', { id: 'snapshots' }, [
        h('thead', {}, h('tr', {}, ['version', 'time', 'types changed', 'reason'].map((t) => h('th', { text: t })))),
        h('tbody', {}, data.snapshots.map((sn) => h('tr', {}, [
          h('td', { class: 'mono', text: String(sn.version) }),
          h('td', { class: 'mono', text: fmtTime(Date.parse(sn.time)) }),
          h('td', { text: (sn.changed || []).join(' ') || '—' }),
          h('td', { class: 'muted', text: sn.reason }),
        ]))),
      ]));
    }
    return out;
  }

  // ---- rollout ----
  function renderRollout() {
    const r = data.rollout;
    if (!r) return [h('h1', { text: pageName }), h('p', { class: 'note', text: 'No rollout named "' + pageName + '" (deleted, or never applied).' })];
    const out = [];
    out.push(h('h1', {}, [r.name, phaseBadge(r.phase, 'phase'), sigBadge(r.signal)]));
    out.push(h('div', { class: 'kv' }, [
      h('div', {}, [h('span', { text: 'canary weight' }), h('b', { id: 'weight', text: r.weight + '%' })]),
      h('div', {}, [h('span', { text: 'observed canary share (this step)' }), h('b', { id: 'observed', text: r.observed || '—' })]),
      h('div', {}, [h('span', { text: 'step' }), h('b', { id: 'step', text: stepText(r) })]),
      h('div', {}, [h('span', { text: 'stable → canary' }), h('b', { class: 'mono', text: r.stable + ' → ' + r.canary })]),
      h('div', {}, [h('span', { text: 'fleet' }), h('b', { text: r.nacks && r.nacks.length ? 'NACK' : r.converged ? 'converged (' + r.fleetNodes + ')' : 'waiting (' + r.fleetNodes + ')' })]),
      h('div', {}, [h('span', { text: 'signal since' }), h('b', { text: ago(r.signalSince) })]),
    ]));
    out.push(h('p', { id: 'reason' }, [h('b', { text: 'Now: ' }), r.reason || '—']));
    if (r.signalReason) out.push(h('p', { class: 'muted' }, ['Signal: ' + r.signalReason]));
    if (r.hookError) out.push(h('p', { class: 'note err', text: 'Last hook error: ' + r.hookError }));
    out.push(renderActions(r));

    out.push(h('h2', { text: 'Steps' }));
    out.push(h('ol', { class: 'steps', id: 'steps' }, r.steps.map((st) => {
      const what = st.pause ? 'manual gate' : st.weight + '%';
      let sub = st.pause ? 'waits for resume' : 'hold ' + fmtDur(st.holdMs);
      if (st.state === 'current' && !st.pause) sub = fmtDur(r.holdCountedMs) + ' counted · ' + fmtDur(r.holdRemainingMs) + ' left';
      if (st.state === 'current' && st.pause && r.phase === 'PAUSED') sub = 'waiting for resume or promote';
      return h('li', { class: st.state, 'data-step': st.n }, [h('b', { text: 'step ' + st.n + '/' + r.steps.length + ' · ' + what }), h('small', { text: sub })]);
    })));

    out.push(h('h2', { text: 'Observed split per step' }));
    out.push(observedTable(r.observedSteps || []));

    out.push(h('h2', { text: 'Timeline' }));
    out.push(h('div', { class: 'card' }, [chart(r), legend()]));

    out.push(h('h2', { text: 'Fleet' }));
    out.push(fleetTable(data.fleet || []));

    out.push(h('h2', { text: 'History' }));
    out.push(eventsTable(r.events));
    return out;
  }

  function renderActions(r) {
    const a = data.auth;
    if (!a.canAct) {
      return h('div', { class: 'actions', id: 'actions' }, h('span', { class: 'muted', text: a.login ? 'Read-only view: log in with the policy API token (top right) to pause, resume, promote or abort.' : 'Read-only view.' }));
    }
    const labels = { pause: 'Pause', resume: 'Resume', promote: 'Promote', abort: 'Abort' };
    const kids = ['pause', 'resume', 'promote', 'abort'].map((v) => {
      const allowed = (r.actions || []).includes(v);
      return h('button', { id: 'btn-' + v, class: v === 'abort' ? 'danger' : v === 'resume' ? 'primary' : '', disabled: !allowed, text: labels[v], onclick: (ev) => act(ev.target, r.name, v, r) });
    });
    if (actionMsg) kids.push(h('span', { class: actionMsg.bad ? 'bad' : 'muted', id: 'action-msg', text: actionMsg.text }));
    return h('div', { class: 'actions', id: 'actions' }, kids);
  }

  // Abort and promote ask for a second click, so a slip does not move traffic.
  const armed = {};
  async function act(btn, name, verb, seen) {
    if ((verb === 'abort' || verb === 'promote') && !(armed[verb] > Date.now())) {
      armed[verb] = Date.now() + 4000;
      btn.textContent = 'Click again to ' + verb;
      return;
    }
    delete armed[verb];
    btn.disabled = true;
    const headers = {};
    if (data.auth.csrf) headers['X-CSRF-Token'] = data.auth.csrf;
    try {
      const expect = seen ? '?phase=' + encodeURIComponent(seen.phase) + '&step=' + seen.step : '';
      const resp = await fetch('/api/dashboard/rollouts/' + encodeURIComponent(name) + '/' + verb + expect, { method: 'POST', headers, credentials: 'same-origin' });
      const body = await resp.json().catch(() => ({}));
      actionMsg = resp.ok ? { text: verb + ': now ' + body.phase } : { bad: true, text: verb + ' refused: ' + (body.error || resp.status) };
    } catch (e) {
      actionMsg = { bad: true, text: verb + ' failed: ' + e };
    }
    const shown = actionMsg;
    setTimeout(() => { if (actionMsg === shown) { actionMsg = null; render(); } }, 6000);
    render();
  }

  function fleetTable(nodes) {
    const types = ['LDS', 'RDS', 'CDS', 'EDS'];
    const ha = nodes.some((n) => n.replica);
    const rows = nodes.map((n) => {
      const byType = Object.fromEntries((n.types || []).map((t) => [t.type, t]));
      const cells = types.map((ty) => {
        const t = byType[ty];
        if (!t) return h('td', { class: 'muted', text: '—' });
        const kids = [h('span', { class: 'mono', text: t.acked || '—' })];
        if (t.nacked) kids.push(h('div', { class: 'bad mono', text: 'NACK v' + t.nacked + ': ' + t.nackError }));
        return h('td', {}, kids);
      });
      return h('tr', { 'data-node': n.id }, [
        h('td', { class: 'mono', text: n.id }),
        h('td', { class: 'mono', text: n.cluster }),
        ...(ha ? [h('td', { class: 'mono', text: n.replica || '—' })] : []),
        h('td', { text: n.protocol }),
        h('td', { text: ago(n.since) }),
        h('td', { text: n.lastStats ? ago(n.lastStats) : 'none' }),
        h('td', {}, n.converged ? h('span', { class: 'ok', text: '✓' }) : h('span', { class: 'bad', text: 'behind' })),
        ...cells,
      ]);
    });
    if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 10, class: 'muted', text: 'no Envoy connected over xDS' })));
    return h('table', { id: 'fleet' }, [
      h('thead', {}, h('tr', {}, ['node', 'cluster', ...(ha ? ['replica'] : []), 'xDS', 'connected', 'last stats', 'converged', 'LDS acked', 'RDS acked', 'CDS acked', 'EDS acked'].map((t) => h('th', { text: t })))),
      h('tbody', {}, rows),
    ]);
  }

  // What the fleet's stats say each step served, next to the configured
  // weight; requests counted before the fleet ACKed a step are its
  // transition, outside the share.
  function observedTable(steps) {
    const rows = steps.map((st) => h('tr', { class: st.current ? 'current' : '' }, [
      h('td', { text: String(st.step) }),
      h('td', {}, phaseBadge(st.phase)),
      h('td', { text: st.weight + '%' }),
      h('td', { class: 'share', text: st.share === null ? st.text : st.share.toFixed(1) + '%' }),
      h('td', { class: 'mono', text: String(st.stable) }),
      h('td', { class: 'mono', text: String(st.canary) + (st.mirrored ? ' (+' + st.mirrored + ' mirrored copies)' : '') }),
      h('td', { class: 'mono muted', text: String(st.transition) }),
      h('td', { text: String(st.nodes) }),
    ]));
    if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 8, class: 'muted', text: 'no stats counted yet' })));
    return h('table', { id: 'observed-steps' }, [
      h('thead', {}, h('tr', {}, ['step', 'phase', 'configured weight', 'observed canary share', 'stable requests', 'canary requests', 'transition', 'nodes'].map((t) => h('th', { text: t })))),
      h('tbody', {}, rows),
    ]);
  }

  function eventsTable(events) {
    const rows = events.slice().reverse().map((e) => {
      const key = e.t + '|' + e.reason;
      const reason = [e.reason];
      if (e.observed) reason.push(h('div', { class: 'muted observed', text: e.observed }));
      if (e.output) {
        const d = h('details', { open: openDetails.has(key), ontoggle: () => (d.open ? openDetails.add(key) : openDetails.delete(key)) }, [h('summary', { text: 'hook output' }), h('pre', { text: e.output })]);
        reason.push(d);
      }
      return h('tr', { class: 'ev-' + e.kind }, [
        h('td', { class: 'mono', text: fmtTime(e.t) }),
        h('td', {}, e.from && e.from !== e.to ? [phaseBadge(e.from), ' → ', phaseBadge(e.to)] : phaseBadge(e.to)),
        h('td', { text: e.weight + '%' }),
        h('td', { text: String(e.step) }),
        h('td', {}, reason),
      ]);
    });
    return h('table', { id: 'events' }, [
      h('thead', {}, h('tr', {}, ['time', 'phase', 'weight', 'step', 'what happened'].map((t) => h('th', { text: t })))),
      h('tbody', {}, rows),
    ]);
  }

  // ---- chart: drawn as SVG, no library ----
  const markColour = { hook: '#7c3aed', nack: '#dc2626', rollback: '#dc2626', hold: '#d97706', success: '#1f9d55', step: '#93c5fd', phase: '#2563eb' };
  function chart(r) {
    const W = 1000, H = 260, L = 44, R = 50, T = 12, B = 26;
    const pts = r.series || [];
    const evs = (r.events || []).filter((e) => e.kind !== 'info');
    // From the first sample to now; a young rollout gets a 20 s frame that
    // fills from the left.
    const t0 = pts.length ? pts[0].t : data.now - 20000;
    const t1 = Math.max(data.now, pts.length ? pts[pts.length - 1].t : 0, t0 + 20000);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / 100) * (H - T - B);
    let emax = 5;
    for (const p of pts) if (p.e !== null && p.e > emax) emax = Math.ceil(p.e / 5) * 5;
    const ye = (v) => T + (1 - v / emax) * (H - T - B);
    const g = [];
    // signal bands
    for (let i = 0; i < pts.length; i++) {
      const p = pts[i];
      if (p.sig !== 'FIRING' && p.sig !== 'STALE') continue;
      const end = i + 1 < pts.length ? pts[i + 1].t : t1;
      g.push(s('rect', { x: x(p.t), y: T, width: Math.max(1, x(end) - x(p.t)), height: H - T - B, fill: p.sig === 'FIRING' ? '#fecaca' : '#e5e7eb', opacity: 0.8, class: 'band band-' + p.sig }));
    }
    // grid and axes
    for (const v of [0, 25, 50, 75, 100]) {
      g.push(s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#e5e7eb' }));
      g.push(s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', text: v + '%' }));
      g.push(s('text', { x: W - R + 6, y: y(v) + 4, 'text-anchor': 'start', fill: '#dc2626', text: ((emax * v) / 100).toFixed(emax < 10 ? 1 : 0) + '%' }));
    }
    for (let i = 0; i <= 5; i++) {
      const t = t0 + ((t1 - t0) * i) / 5;
      g.push(s('text', { x: x(t), y: H - 8, 'text-anchor': i === 0 ? 'start' : i === 5 ? 'end' : 'middle', text: fmtTime(t) }));
    }
    // event markers
    for (const e of evs) {
      if (e.t < t0 || e.t > t1) continue;
      const c = markColour[e.kind] || '#9ca3af';
      g.push(s('line', { x1: x(e.t), x2: x(e.t), y1: T, y2: H - B, stroke: c, 'stroke-width': e.kind === 'step' ? 1 : 1.5, 'stroke-dasharray': e.kind === 'step' ? '3 3' : null }, s('title', { text: fmtTime(e.t) + ' ' + e.to + ': ' + e.reason })));
      g.push(s('circle', { cx: x(e.t), cy: T + 4, r: 4, fill: c, class: 'mark mark-' + e.kind }, s('title', { text: fmtTime(e.t) + ' ' + e.to + ': ' + e.reason })));
    }
    // configured weight: a step line
    if (pts.length) {
      let d = 'M' + x(pts[0].t) + ',' + y(pts[0].w);
      for (let i = 1; i < pts.length; i++) d += 'H' + x(pts[i].t) + 'V' + y(pts[i].w);
      d += 'H' + x(t1);
      g.push(s('path', { d, fill: 'none', stroke: '#2563eb', 'stroke-width': 2.5, id: 'line-weight' }));
    }
    g.push(poly(pts, (p) => p.s, x, y, { stroke: '#1f9d55', 'stroke-width': 1.8, id: 'line-share' }));
    g.push(poly(pts, (p) => p.e, x, ye, { stroke: '#dc2626', 'stroke-width': 1.5, 'stroke-dasharray': '4 2', id: 'line-errors' }));
    return s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'weight, observed canary share and error rate over time' }, g);
  }

  function poly(pts, val, x, y, attrs) {
    let d = '', pen = false;
    for (const p of pts) {
      const v = val(p);
      if (v === null || v === undefined) { pen = false; continue; }
      d += (pen ? 'L' : 'M') + x(p.t).toFixed(1) + ',' + y(v).toFixed(1);
      pen = true;
    }
    return s('path', Object.assign({ d: d || 'M0,0', fill: 'none' }, attrs));
  }

  function legend() {
    const item = (cls, colour, text) => {
      const i = h('i', { class: cls });
      i.style.background = colour;
      return h('span', {}, [i, text]);
    };
    return h('div', { class: 'legend' }, [
      item('', '#2563eb', 'configured weight'),
      item('', '#1f9d55', 'observed canary share'),
      item('', '#dc2626', 'canary 5xx rate (right axis)'),
      item('box', '#f87171', 'signal FIRING'),
      item('box', '#9ca3af', 'signal STALE'),
      item('', '#d97706', 'hold'),
      item('', '#7c3aed', 'hook'),
      item('', '#b91c1c', 'NACK / rollback'),
    ]);
  }

  // ---- live ----
  function setConn(on) {
    const c = $('conn');
    c.className = 'conn ' + (on ? 'on' : 'off');
    c.textContent = on ? 'live' : 'reconnecting…';
  }

  function connect() {
    const es = new EventSource('/api/dashboard/stream' + (pageName ? '?rollout=' + encodeURIComponent(pageName) : ''));
    es.addEventListener('data', (e) => {
      data = JSON.parse(e.data);
      render();
      setConn(true);
    });
    es.onerror = () => setConn(false); // EventSource reconnects by itself
  }

  render();
  connect();
})();
