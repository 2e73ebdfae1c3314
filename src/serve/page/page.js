// The lova-fast demo page. Plain JavaScript, no dependencies: it posts videos
// to /v1/audio, follows each job's Server-Sent Events with fetch() (EventSource
// cannot send the Authorization header), plays the result from a blob: URL and
// draws a waveform and a mel-scaled spectrogram of its audio.
'use strict';

(() => {
  const TOKEN_KEY = 'lova-fast-token';
  const $ = (id) => document.getElementById(id);

  // ---- the token: asked for on a 401, kept in this tab only, sent as a header ----

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  let tokenWanted = null; // a promise every 401 waits on until the user gives a token

  function askToken(rejected) {
    if (!tokenWanted) {
      tokenWanted = new Promise((resolve) => {
        const form = $('token-form');
        $('token-why').textContent = rejected
          ? 'The server did not accept this access token. Check it and try again.'
          : 'This server needs an access token. Ask whoever runs it; the page keeps it in this tab only.';
        form.hidden = false;
        $('token').value = '';
        $('token').focus();
        form.onsubmit = (e) => {
          e.preventDefault();
          const value = $('token').value.trim();
          if (!value) return;
          try {
            sessionStorage.setItem(TOKEN_KEY, value);
          } catch (_) {
            memoryToken = value;
          }
          form.hidden = true;
          tokenWanted = null;
          resolve();
        };
      });
    }
    return tokenWanted;
  }

  let memoryToken = ''; // when sessionStorage is unavailable (private modes)

  function authHeaders() {
    const token = storedToken() || memoryToken;
    return token ? { Authorization: 'Bearer ' + token } : {};
  }

  // ---- API calls and their errors in plain words ----

  class ApiFailure extends Error {
    constructor(status, code, detail, retryAfter) {
      super(detail);
      this.status = status;
      this.code = code;
      this.detail = detail;
      this.retryAfter = retryAfter;
    }
  }

  // fetch() with the token; waits for a token on 401 and tries again.
  async function api(path, init = {}) {
    for (;;) {
      const sentToken = authHeaders().Authorization || '';
      let response;
      try {
        response = await fetch(path, {
          ...init,
          cache: 'no-store',
          headers: { ...(init.headers || {}), ...authHeaders() },
        });
      } catch (e) {
        if (e && e.name === 'AbortError') throw e;
        throw new ApiFailure(0, 'network', 'could not reach the server', null);
      }
      if (response.status === 401) {
        await askToken(sentToken !== '');
        continue;
      }
      if (response.ok) return response;
      let code = '';
      let detail = '';
      try {
        const body = await response.json();
        code = body.error.code || '';
        detail = body.error.message || '';
      } catch (_) {
        detail = response.statusText;
      }
      throw new ApiFailure(response.status, code, detail, response.headers.get('Retry-After'));
    }
  }

  function trimStop(text) {
    return String(text || '').trim().replace(/[.\s]+$/, '');
  }

  function plainWords(err) {
    if (!(err instanceof ApiFailure)) return 'Something went wrong in the page: ' + trimStop(err && err.message) + '.';
    const detail = trimStop(err.detail);
    const because = detail ? ' (' + detail + ').' : '.';
    switch (err.status) {
      case 0:
        return 'Could not reach the server. Is it still running?';
      case 400:
        if (err.code === 'unreadable_media') return 'This file could not be read as a video' + because;
        if (err.code === 'malformed_file') return 'This file is damaged or not in the expected format' + because;
        return 'The server did not accept the request' + because;
      case 401:
        return 'This server needs an access token.';
      case 404:
        return 'This job is no longer on the server: its result expired or was deleted.';
      case 409:
        return 'The result is not available' + because;
      case 413:
        return 'This file is larger than the server accepts.';
      case 422:
        if (err.code === 'too_long') return 'This video is too long for the model' + because;
        return 'The server cannot use this file or these settings' + because;
      case 429: {
        const wait = err.retryAfter ? err.retryAfter + ' seconds' : 'a few seconds';
        return 'The server is busy: its queue is full. Try again in ' + wait + '.';
      }
      case 503:
        return 'The server is not ready' + because + ' Try again shortly.';
      default:
        return 'The server failed (HTTP ' + err.status + ')' + because;
    }
  }

  // ---- the form: chosen or dropped videos, settings ----

  let chosen = [];

  function showChosen() {
    const names = chosen.map((f) => f.name);
    $('chosen').textContent = names.length ? 'Chosen: ' + names.join(', ') : 'No video chosen.';
  }

  function setupForm() {
    const input = $('files');
    const drop = $('drop');
    input.addEventListener('change', () => {
      chosen = Array.from(input.files || []);
      showChosen();
    });
    drop.addEventListener('dragover', (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      const files = Array.from((e.dataTransfer && e.dataTransfer.files) || []);
      if (files.length) {
        chosen = files;
        showChosen();
      }
    });
    $('job-form').addEventListener('submit', (e) => {
      e.preventDefault();
      $('error').textContent = '';
      if (!chosen.length) {
        $('error').textContent = 'Choose a video first (or drop one on the box).';
        input.focus();
        return;
      }
      const settings = {};
      for (const name of ['seed', 'steps', 'cfg']) {
        const value = $(name).value.trim();
        if (value !== '') settings[name] = value;
      }
      settings.format = $('format').value;
      const files = chosen;
      chosen = [];
      input.value = '';
      showChosen();
      $('notice').textContent = files.length === 1 ? 'Sending 1 video.' : 'Sending ' + files.length + ' videos.';
      for (const file of files) submit(file, settings);
    });
  }

  // ---- jobs: one card each ----

  const STAGES = {
    decode: ['Reading the video', 0, 0.05],
    clip: ['Looking at the frames', 0.05, 0.1],
    sampling: ['Generating', 0.1, 0.92],
    vae: ['Turning it into sound', 0.92, 1],
  };

  function newCard(name) {
    const node = $('job-template').content.firstElementChild.cloneNode(true);
    const card = {
      node,
      id: null,
      name,
      final: false,
      format: 'wav',
      fraction: 0,
      urls: [],
      el: (cls) => node.querySelector('.' + cls),
    };
    card.el('job-name').textContent = name;
    card.el('job-progress').setAttribute('aria-label', 'Progress of ' + name);
    card.el('job-cancel').setAttribute('aria-label', 'Cancel ' + name);
    card.el('job-cancel').addEventListener('click', () => cancel(card));
    card.el('job-reuse').addEventListener('click', () => {
      $('seed').value = card.seed;
      $('seed').focus();
    });
    $('empty').hidden = true;
    $('jobs').prepend(node);
    setStatus(card, 'uploading', 'Uploading');
    return card;
  }

  function setStatus(card, status, label) {
    card.node.dataset.status = status;
    card.el('job-status').textContent = label || status;
  }

  function setFraction(card, fraction) {
    card.fraction = Math.max(card.fraction, Math.min(1, fraction));
    card.el('job-progress').value = card.fraction;
  }

  function fail(card, status, words) {
    card.final = true;
    setStatus(card, status, status === 'refused' ? 'Not accepted' : status);
    card.el('job-error').textContent = words;
    card.el('job-cancel').hidden = true;
  }

  async function submit(file, settings) {
    const card = newCard(file.name);
    const body = new FormData();
    body.append('video', file, file.name);
    for (const [k, v] of Object.entries(settings)) body.append(k, v);
    try {
      const response = await api('/v1/audio', { method: 'POST', body });
      const record = await response.json();
      card.id = record.id;
      card.node.dataset.id = record.id;
      card.format = record.format;
      update(card, record);
      $('notice').textContent = file.name + ' was accepted: its progress is under \u201cYour jobs\u201d.';
      follow(card);
    } catch (err) {
      const words = plainWords(err);
      fail(card, 'refused', words);
      $('error').textContent = file.name + ': ' + words;
    }
  }

  // A status record from the API (POST, GET, DELETE or an SSE `status` event).
  function update(card, record) {
    if (card.final) return;
    if (record.seed !== null && record.seed !== undefined) {
      card.seed = record.seed;
      card.el('job-seed').textContent = 'Seed ' + record.seed + ' (the same seed and settings give the same sound).';
      card.el('job-reuse').hidden = false;
    }
    const steps = record.steps || 0;
    switch (record.status) {
      case 'queued':
        setStatus(card, 'queued', 'Queued');
        card.el('job-stage').textContent = 'Waiting for its turn.';
        break;
      case 'running':
        setStatus(card, 'running', 'Running');
        if (record.step > 0 && steps) progress(card, { stage: 'sampling', done: record.step, total: steps });
        break;
      case 'succeeded':
        card.final = true;
        setStatus(card, 'succeeded', 'Done');
        setFraction(card, 1);
        card.el('job-stage').textContent = steps + ' steps, ' + Number(record.seconds_of_audio).toFixed(1) + ' s of audio.';
        card.el('job-cancel').hidden = true;
        showResult(card);
        break;
      case 'failed':
      case 'cancelled': {
        const detail = record.error ? trimStop(record.error.message) : '';
        // A cancel from this page needs no explanation; one by the server (shutdown) does.
        const bySomeoneElse = detail && detail !== 'cancelled' && detail !== 'cancelled by DELETE';
        const words = record.status === 'cancelled'
          ? 'Cancelled' + (bySomeoneElse ? ': ' + detail + '.' : '.')
          : 'It failed' + (detail ? ': ' + detail + '.' : '.');
        fail(card, record.status, words);
        card.el('job-status').textContent = record.status === 'cancelled' ? 'Cancelled' : 'Failed';
        card.el('job-stage').textContent = '';
        break;
      }
      default:
        break;
    }
  }

  function progress(card, p) {
    const stage = STAGES[p.stage];
    if (!stage || card.final) return;
    const total = Math.max(1, p.total || 1);
    const done = Math.min(p.done || 0, total);
    const [label, from, to] = stage;
    setStatus(card, 'running', 'Running');
    card.el('job-stage').textContent =
      p.stage === 'sampling' ? 'Step ' + done + ' of ' + total + '.' : label + ': ' + done + ' of ' + total + '.';
    setFraction(card, from + (to - from) * (done / total));
  }

  // Follows the job's events until its final status; reconnects if the stream drops.
  async function follow(card) {
    for (let attempt = 0; !card.final && attempt < 30; attempt++) {
      try {
        const response = await api('/v1/audio/' + card.id + '/events', { headers: { Accept: 'text/event-stream' } });
        await readEvents(response, (name, data) => {
          let value;
          try {
            value = JSON.parse(data);
          } catch (_) {
            return;
          }
          if (name === 'status') update(card, value);
          else if (name === 'progress') progress(card, value);
        });
      } catch (err) {
        if (err instanceof ApiFailure && err.status === 404) {
          fail(card, 'failed', plainWords(err));
          return;
        }
      }
      if (card.final) return;
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * (attempt + 1))));
      try {
        update(card, await (await api('/v1/audio/' + card.id)).json());
      } catch (_) {
        // The next attempt says more.
      }
    }
  }

  // Server-Sent Events from a fetch() body: blocks end at a blank line,
  // `event:` names them, `data:` lines carry the text, `:` lines keep alive.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? '' : line.slice(colon + 1);
          if (text.startsWith(' ')) text = text.slice(1);
          if (field === 'event') name = text;
          else if (field === 'data') data.push(text);
        }
        if (data.length) onEvent(name, data.join('\n'));
      }
    }
  }

  async function cancel(card) {
    if (card.final) return;
    const button = card.el('job-cancel');
    if (!card.id) {
      card.el('job-error').textContent = 'It is still uploading; cancel once it is queued.';
      return;
    }
    button.disabled = true;
    try {
      update(card, await (await api('/v1/audio/' + card.id, { method: 'DELETE' })).json());
    } catch (err) {
      card.el('job-error').textContent = plainWords(err);
    } finally {
      button.disabled = false;
    }
  }

  // ---- the result: a player, download links and the audio picture ----

  async function showResult(card) {
    const box = card.el('job-result');
    let blob;
    try {
      blob = await (await api('/v1/audio/' + card.id + '/content')).blob();
    } catch (err) {
      card.el('job-error').textContent = plainWords(err);
      return;
    }
    const url = URL.createObjectURL(blob);
    card.urls.push(url);
    const isVideo = card.format === 'mp4';
    const player = document.createElement(isVideo ? 'video' : 'audio');
    player.controls = true;
    player.preload = 'auto';
    player.src = url;
    player.setAttribute('aria-label', (isVideo ? 'The video with its soundtrack: ' : 'The soundtrack of ') + card.name);
    if (isVideo) player.playsInline = true;
    box.append(player);

    const canvas = document.createElement('canvas');
    canvas.width = 800;
    canvas.height = 240;
    canvas.className = 'job-picture';
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', 'Waveform (top) and spectrogram (bottom) of the soundtrack of ' + card.name);
    box.append(canvas);

    const links = document.createElement('p');
    const base = card.name.replace(/\.[^.]*$/, '') + '-seed' + card.seed;
    const download = document.createElement('a');
    download.href = url;
    download.download = base + (isVideo ? '.mp4' : '.wav');
    download.textContent = isVideo ? 'Download the video (MP4)' : 'Download the audio (WAV)';
    links.append(download);
    box.append(links);

    try {
      const audio = await decodeAudio(await blob.arrayBuffer());
      drawPicture(canvas, audio.samples, audio.rate);
      canvas.dataset.drawn = 'true';
    } catch (_) {
      canvas.remove();
      const note = document.createElement('p');
      note.className = 'hint';
      note.textContent = 'This browser cannot decode the audio to draw it.';
      box.insertBefore(note, links);
    }
  }

  async function decodeAudio(bytes) {
    const Offline = window.OfflineAudioContext || window.webkitOfflineAudioContext;
    const context = new Offline(1, 1, 44100);
    const buffer = await context.decodeAudioData(bytes);
    const samples = new Float32Array(buffer.length);
    for (let c = 0; c < buffer.numberOfChannels; c++) {
      const channel = buffer.getChannelData(c);
      for (let i = 0; i < samples.length; i++) samples[i] += channel[i] / buffer.numberOfChannels;
    }
    return { samples, rate: buffer.sampleRate };
  }

  // In-place radix-2 FFT of (re, im), length a power of two.
  function fft(re, im) {
    const n = re.length;
    for (let i = 1, j = 0; i < n; i++) {
      let bit = n >> 1;
      for (; j & bit; bit >>= 1) j ^= bit;
      j ^= bit;
      if (i < j) {
        [re[i], re[j]] = [re[j], re[i]];
        [im[i], im[j]] = [im[j], im[i]];
      }
    }
    for (let len = 2; len <= n; len <<= 1) {
      const angle = (-2 * Math.PI) / len;
      const wr = Math.cos(angle);
      const wi = Math.sin(angle);
      for (let i = 0; i < n; i += len) {
        let cr = 1;
        let ci = 0;
        for (let k = 0; k < len / 2; k++) {
          const a = i + k;
          const b = a + len / 2;
          const tr = re[b] * cr - im[b] * ci;
          const ti = re[b] * ci + im[b] * cr;
          re[b] = re[a] - tr;
          im[b] = im[a] - ti;
          re[a] += tr;
          im[a] += ti;
          const next = cr * wr - ci * wi;
          ci = cr * wi + ci * wr;
          cr = next;
        }
      }
    }
  }

  // A dark-to-bright colour ramp for t in [0, 1].
  function colour(t) {
    const r = Math.min(255, 40 + 300 * t);
    const g = Math.max(0, Math.min(255, 360 * t * t - 20));
    const b = Math.max(0, Math.min(255, 90 + 200 * Math.sin(Math.PI * t) - 120 * t));
    return [r, g, b];
  }

  function drawPicture(canvas, samples, rate) {
    const g = canvas.getContext('2d');
    const width = canvas.width;
    const waveHeight = 80;
    const specHeight = canvas.height - waveHeight;
    g.fillStyle = '#10141a';
    g.fillRect(0, 0, width, canvas.height);

    // Waveform: the min..max of each column's samples.
    g.strokeStyle = '#7fb2ff';
    g.beginPath();
    const perColumn = Math.max(1, samples.length / width);
    for (let x = 0; x < width; x++) {
      const from = Math.floor(x * perColumn);
      const to = Math.min(samples.length, Math.max(from + 1, Math.floor((x + 1) * perColumn)));
      let lo = 0;
      let hi = 0;
      for (let i = from; i < to; i++) {
        lo = Math.min(lo, samples[i]);
        hi = Math.max(hi, samples[i]);
      }
      const mid = waveHeight / 2;
      g.moveTo(x + 0.5, mid - Math.max(hi, 0.004) * (mid - 2));
      g.lineTo(x + 0.5, mid - Math.min(lo, -0.004) * (mid - 2));
    }
    g.stroke();

    // Spectrogram: Hann-windowed frames, rows spaced on the mel scale, dB relative to the loudest.
    const size = 1024;
    const bins = size / 2;
    const hann = new Float32Array(size);
    for (let i = 0; i < size; i++) hann[i] = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (size - 1));
    const mel = (f) => 2595 * Math.log10(1 + f / 700);
    const hz = (m) => 700 * (Math.pow(10, m / 2595) - 1);
    const top = mel(rate / 2);
    const rowBin = new Int32Array(specHeight);
    for (let y = 0; y < specHeight; y++) {
      const f = hz(top * (1 - (y + 0.5) / specHeight));
      rowBin[y] = Math.min(bins - 1, Math.max(1, Math.round((f / rate) * size)));
    }
    const db = new Float32Array(width * specHeight);
    const re = new Float32Array(size);
    const im = new Float32Array(size);
    const hop = Math.max(1, (samples.length - size) / Math.max(1, width - 1));
    let loudest = -Infinity;
    for (let x = 0; x < width; x++) {
      const start = Math.floor(x * hop);
      for (let i = 0; i < size; i++) {
        const s = start + i < samples.length ? samples[start + i] : 0;
        re[i] = s * hann[i];
        im[i] = 0;
      }
      fft(re, im);
      for (let y = 0; y < specHeight; y++) {
        const k = rowBin[y];
        const v = 10 * Math.log10(re[k] * re[k] + im[k] * im[k] + 1e-12);
        db[y * width + x] = v;
        if (v > loudest) loudest = v;
      }
    }
    const image = g.createImageData(width, specHeight);
    const range = 80;
    for (let i = 0; i < db.length; i++) {
      const t = Math.max(0, Math.min(1, (db[i] - (loudest - range)) / range));
      const [r, gg, b] = colour(t);
      image.data[4 * i] = r;
      image.data[4 * i + 1] = gg;
      image.data[4 * i + 2] = b;
      image.data[4 * i + 3] = 255;
    }
    g.putImageData(image, 0, waveHeight);
  }

  setupForm();
})();
