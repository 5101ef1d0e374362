// Switchyard console: the live parts of pages that work without it.
// - Live events: an EventSource on the hub's own stream, rendered as expandable entries.
// - Sections with data-refresh: re-read every 1.5 s while they say so (a sync run going on).
// No inline script, nothing from another origin (the Content-Security-Policy forbids both).
'use strict';

(function () {
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function time(ms) {
    const d = new Date(ms);
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  }

  function liveEvents() {
    const list = document.getElementById('live');
    if (!list) return;
    const status = document.getElementById('live-status');
    const pause = document.getElementById('live-pause');
    const clear = document.getElementById('live-clear');
    const params = new URLSearchParams(window.location.search);
    const url = list.dataset.stream + '?' + params.toString();
    let paused = false;
    let seen = 0;
    const MAX = 500;
    const source = new EventSource(url);
    source.addEventListener('open', () => {
      status.textContent = list.dataset.listening || 'Listening. Messages appear here as the hub accepts or refuses them.';
    });
    source.addEventListener('error', () => {
      status.textContent = 'Disconnected; reconnecting…';
    });
    source.addEventListener('skipped', (ev) => {
      status.textContent = ev.data + ' messages were skipped (this page fell behind).';
    });
    source.addEventListener('message', (ev) => {
      if (paused) return;
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      seen += 1;
      const li = el('li', { class: 'event ' + m.outcome, 'data-message-id': m.message_id || '' });
      const details = el('details');
      const summary = el('summary');
      summary.append(el('span', { class: 'badge ' + (m.outcome === 'accepted' || m.outcome === 'forwarded' ? 'ok' : 'bad') }, m.outcome));
      summary.append(' ');
      summary.append(el('span', { class: 'type' }, m.type));
      summary.append(' ');
      summary.append(el('strong', {}, m.name || ''));
      const body = m.body || {};
      const who = body.userId || body.anonymousId || '';
      if (who) summary.append(' ', el('code', { class: 'who' }, who));
      summary.append(' ', el('span', { class: 'hint' }, (m.source ? m.source + ' · ' : '') + time(m.at)));
      if (m.reason) summary.append(' ', el('span', { class: 'reason' }, m.reason + ': ' + (m.error || '')));
      details.append(summary);
      details.append(el('pre', {}, JSON.stringify(body, null, 2)));
      li.append(details);
      list.prepend(li);
      while (list.children.length > MAX) list.lastElementChild.remove();
      status.textContent = seen + (seen === 1 ? ' message' : ' messages') + ' since this page opened.';
    });
    pause.addEventListener('click', () => {
      paused = !paused;
      pause.setAttribute('aria-pressed', String(paused));
      pause.textContent = paused ? 'Resume' : 'Pause';
      if (paused) status.textContent = 'Paused: new messages are not shown.';
    });
    clear.addEventListener('click', () => { list.replaceChildren(); seen = 0; });
  }

  function refreshing() {
    const tick = async () => {
      const sections = document.querySelectorAll('[data-refresh]');
      for (const section of sections) {
        try {
          const r = await fetch(section.dataset.refresh, { credentials: 'same-origin' });
          if (!r.ok) continue;
          const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
          const fresh = doc.getElementById(section.id);
          if (fresh) section.replaceWith(document.importNode(fresh, true));
        } catch (_) { /* try again next tick */ }
      }
      if (document.querySelector('[data-refresh]')) setTimeout(tick, 1500);
    };
    if (document.querySelector('[data-refresh]')) setTimeout(tick, 1500);
  }

  document.addEventListener('DOMContentLoaded', () => {
    liveEvents();
    refreshing();
  });
})();
