/* omnichannel web chat: embed with
 *   <script src="https://ENGINE/webchat/widget.js" data-widget="WIDGET-KEY" async></script>
 * Plain JavaScript, no build step. Visitors' and agents' text is only ever inserted with
 * textContent. The widget lives in a shadow root so the host page's CSS cannot break it. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.dataset.widget) { return; }
  var KEY = script.dataset.widget;
  var BASE = new URL(script.src, location.href);
  var ORIGIN = BASE.origin;
  var PAGE = script.dataset.mode === "page";
  var STORE = "omnichannel-webchat:" + KEY;

  var TEXTS = {
    id: {
      open: "Buka obrolan pengaduan", launcher: "Obrolan", close: "Tutup obrolan",
      title: "Layanan Pengaduan", log: "Percakapan", message: "Pesan Anda",
      placeholder: "Tulis pesan\u2026", send: "Kirim", attach: "Foto", attachLabel: "Kirim foto",
      sending: "Mengirim\u2026", failed: "Gagal terkirim", connecting: "Menyambungkan\u2026",
      reconnecting: "Koneksi terputus, menyambung ulang\u2026",
      identify: "Sebelum mulai, isi data berikut.", optional: "Boleh dikosongkan.",
      name: "Nama", phone: "Nomor telepon", email: "E-mail", start: "Mulai",
      photo: "Foto", file: "Berkas", you: "Anda", agent: "Petugas",
      rate_limited: "Terlalu banyak pesan. Tunggu sebentar lalu kirim lagi.",
      too_large: "Berkas terlalu besar.", unsupported_type: "Hanya foto (JPEG, PNG, WebP, GIF).",
      identify_required: "Lengkapi data Anda terlebih dahulu.",
      invalid_phone: "Nomor telepon tidak valid.", invalid_email: "Alamat e-mail tidak valid.",
      error: "Pesan tidak dapat dikirim."
    },
    en: {
      open: "Open the complaints chat", launcher: "Chat", close: "Close the chat",
      title: "Complaints service", log: "Conversation", message: "Your message",
      placeholder: "Write a message\u2026", send: "Send", attach: "Photo", attachLabel: "Send a photo",
      sending: "Sending\u2026", failed: "Not sent", connecting: "Connecting\u2026",
      reconnecting: "Connection lost, reconnecting\u2026",
      identify: "Before you start, please fill in the following.", optional: "You may leave it empty.",
      name: "Name", phone: "Phone number", email: "E-mail", start: "Start",
      photo: "Photo", file: "File", you: "You", agent: "Staff",
      rate_limited: "Too many messages. Wait a moment and send again.",
      too_large: "The file is too large.", unsupported_type: "Photos only (JPEG, PNG, WebP, GIF).",
      identify_required: "Please fill in your details first.",
      invalid_phone: "The phone number is not valid.", invalid_email: "The e-mail address is not valid.",
      error: "The message could not be sent."
    }
  };
  // Indonesian until the server says which language the widget speaks.
  var lang = "id";
  var t = TEXTS[lang];

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function randomId() {
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function load() {
    try { return JSON.parse(localStorage.getItem(STORE) || "{}"); } catch (e) { return {}; }
  }
  function save(state) {
    try { localStorage.setItem(STORE, JSON.stringify(state)); } catch (e) { /* private mode */ }
  }

  // The DOM, in a shadow root of its own.
  var host = el("div", { "data-omnichannel-webchat": KEY });
  var root = host.attachShadow({ mode: "open" });
  var wrap = el("div", { "class": PAGE ? "page" : "embedded" });
  root.appendChild(el("link", { rel: "stylesheet", href: ORIGIN + "/webchat/widget.css" }));
  root.appendChild(wrap);
  var launcher = el("button", { type: "button", "class": "launcher", "aria-haspopup": "dialog",
                                "aria-expanded": "false", "aria-controls": "chat-panel" });
  var panel = el("div", { id: "chat-panel", "class": "panel", role: "dialog",
                          "aria-labelledby": "chat-title" });
  panel.hidden = true;
  var header = el("header");
  var title = el("h2", { id: "chat-title" });
  var closeButton = el("button", { type: "button", "class": "close" }, "\u00d7");
  header.appendChild(title);
  if (!PAGE) { header.appendChild(closeButton); }
  var status = el("p", { "class": "status", role: "status" });
  status.hidden = true;
  var log = el("ol", { "class": "log", "aria-live": "polite", "aria-relevant": "additions" });
  var identifyForm = el("form", { "class": "identify", novalidate: "" });
  identifyForm.hidden = true;
  var compose = el("form", { "class": "compose" });
  var textLabel = el("label", { "for": "chat-text", "class": "visually-hidden" });
  var text = el("textarea", { id: "chat-text", rows: "1", maxlength: "4000" });
  var fileInput = el("input", { id: "chat-file", type: "file", "class": "visually-hidden",
                                accept: "image/jpeg,image/png,image/webp,image/gif" });
  var fileLabel = el("label", { "for": "chat-file", "class": "attach" });
  var sendButton = el("button", { type: "submit" });
  compose.appendChild(textLabel);
  compose.appendChild(text);
  compose.appendChild(fileInput);
  compose.appendChild(fileLabel);
  compose.appendChild(sendButton);
  panel.appendChild(header);
  panel.appendChild(status);
  panel.appendChild(log);
  panel.appendChild(identifyForm);
  panel.appendChild(compose);
  if (!PAGE) { wrap.appendChild(launcher); }
  wrap.appendChild(panel);

  function applyTexts(widget) {
    t = TEXTS[(widget && widget.language) || lang] || TEXTS.id;
    launcher.textContent = t.launcher;
    launcher.setAttribute("aria-label", t.open);
    closeButton.setAttribute("aria-label", t.close);
    title.textContent = (widget && widget.title) || t.title;
    log.setAttribute("aria-label", t.log);
    textLabel.textContent = t.message;
    text.setAttribute("placeholder", t.placeholder);
    fileLabel.textContent = t.attach;
    fileInput.setAttribute("aria-label", t.attachLabel);
    sendButton.textContent = t.send;
  }
  applyTexts(null);

  // State: what is shown (by sequence number) and what waits for its acknowledgement.
  var state = load();
  var shown = {};          // seq -> li
  var pending = {};        // client id -> {li, text}
  var cursor = 0;          // the last history frame's cursor: where a reconnect resumes
  var ws = null;
  var retryMs = 1000;
  var widgetConfig = null;
  var visitor = {};
  var started = false;

  // Receipts: replies shown are `delivered`, seen in the open window `read` (forward only).
  var RANK = { queued: 0, sending: 1, sent: 2, delivered: 3, read: 4, failed: 5 };
  var replies = {};        // seq of an agent's reply -> the furthest state reported
  var reporting = null;
  function report() {
    reporting = null;
    if (!ws || ws.readyState !== WebSocket.OPEN) { return; }
    var status = !panel.hidden && document.visibilityState === "visible" ? "read" : "delivered";
    var seqs = Object.keys(replies).filter(function (seq) {
      return (RANK[replies[seq]] || 0) < RANK[status];
    }).slice(0, 500);
    if (!seqs.length) { return; }
    seqs.forEach(function (seq) { replies[seq] = status; });
    ws.send(JSON.stringify({ type: "seen", status: status, seqs: seqs.map(Number) }));
  }
  // Gathered for a moment: one frame for a whole replay.
  function reportSoon() { if (!reporting) { reporting = setTimeout(report, 300); } }
  document.addEventListener("visibilitychange", reportSoon);

  function setStatus(message) {
    status.textContent = message || "";
    status.hidden = !message;
  }
  function scrollDown() { log.scrollTop = log.scrollHeight; }

  function fetchFile(seq, position, li, info) {
    fetch(ORIGIN + "/chat/" + encodeURIComponent(KEY) + "/files/" + seq + "/" + position, {
      headers: { Authorization: "Bearer " + state.token }
    }).then(function (resp) {
      if (!resp.ok) { throw new Error(resp.status); }
      return resp.blob();
    }).then(function (blob) {
      var url = URL.createObjectURL(blob);
      var name = info.filename || t.file;
      if (/^image\/(jpeg|png|webp|gif)$/.test(info.content_type || "")) {
        li.appendChild(el("img", { src: url, alt: t.photo + ": " + name }));
      } else {
        var link = el("a", { href: url, download: name }, name);
        li.appendChild(link);
      }
      scrollDown();
    }).catch(function () {
      li.appendChild(el("span", { "class": "note" }, t.file + ": " + (info.filename || "")));
    });
  }

  function bubble(direction) {
    var li = el("li", { "class": direction });
    li.appendChild(el("span", { "class": "visually-hidden" }, (direction === "inbound" ? t.you : t.agent) + ": "));
    return li;
  }

  function place(li, seq) {
    // Shown in sequence order; messages still waiting for their ack stay last.
    var before = null;
    var items = log.children;
    for (var i = 0; i < items.length; i++) {
      var other = items[i].dataset.seq;
      if (other === undefined || Number(other) > seq) { before = items[i]; break; }
    }
    log.insertBefore(li, before);
  }

  function show(message) {
    if (shown[message.seq]) { return; }
    var li;
    var waiting = message.client_id && pending[message.client_id];
    if (waiting) {
      li = waiting.li;
      delete pending[message.client_id];
      li.classList.remove("pending");
      var note = li.querySelector(".note");
      if (note) { note.remove(); }
      li.remove();
    } else {
      li = bubble(message.direction);
      if (message.text) { li.appendChild(el("span", { "class": "text" }, message.text)); }
    }
    li.dataset.seq = String(message.seq);
    shown[message.seq] = li;
    if (message.direction === "outbound") {
      replies[message.seq] = message.status || "sent";
      reportSoon();
    }
    place(li, message.seq);
    (message.attachments || []).forEach(function (info) {
      if (!waiting || !li.querySelector("img")) { fetchFile(message.seq, info.position, li, info); }
    });
    scrollDown();
  }

  function acknowledged(ack) {
    var waiting = pending[ack.id];
    if (!waiting) { return; }
    if (shown[ack.seq]) {  // already shown from the history of a reconnect
      waiting.li.remove();
      delete pending[ack.id];
      return;
    }
    show({ seq: ack.seq, client_id: ack.id, direction: "inbound", attachments: [] });
  }

  function failed(frame) {
    var waiting = frame.id && pending[frame.id];
    var reason = t[frame.code] || t.error;
    if (frame.code === "identify_required") { askIdentity(); }
    if (!waiting) { setStatus(reason); return; }
    if (frame.retry) { return; }  // sent again when the chat reconnects
    delete pending[frame.id];
    waiting.li.classList.remove("pending");
    waiting.li.classList.add("failed");
    var note = waiting.li.querySelector(".note") || waiting.li.appendChild(el("span", { "class": "note" }));
    note.textContent = t.failed + ": " + reason;
  }

  function transmit(id) {
    var waiting = pending[id];
    if (waiting && waiting.text !== undefined && ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "message", id: id, text: waiting.text }));
    }
  }

  function sendText(value) {
    var id = randomId();
    var li = bubble("inbound");
    li.classList.add("pending");
    li.appendChild(el("span", { "class": "text" }, value));
    li.appendChild(el("span", { "class": "note" }, t.sending));
    log.appendChild(li);
    pending[id] = { li: li, text: value };
    scrollDown();
    transmit(id);
  }

  function sendFile(file) {
    var id = randomId();
    var li = bubble("inbound");
    li.classList.add("pending");
    li.appendChild(el("span", { "class": "note" }, t.sending + " " + t.photo));
    log.appendChild(li);
    pending[id] = { li: li };
    fetch(ORIGIN + "/chat/" + encodeURIComponent(KEY) + "/upload?id=" + id + "&name=" + encodeURIComponent(file.name || ""), {
      method: "POST", body: file,
      headers: { Authorization: "Bearer " + state.token, "Content-Type": file.type || "application/octet-stream" }
    }).then(function (resp) {
      return resp.json().then(function (body) { return { ok: resp.ok, body: body }; });
    }).then(function (result) {
      if (result.ok) {
        // Shown once, whether the socket brought it first or this answer does.
        show({ seq: result.body.seq, client_id: id, direction: "inbound",
               attachments: [{ position: 0, content_type: file.type, filename: file.name }] });
      } else {
        failed({ id: id, code: result.body.code });
      }
    }).catch(function () { failed({ id: id, code: "error" }); });
  }

  function askIdentity() {
    var require = (widgetConfig && widgetConfig.require) || [];
    while (identifyForm.firstChild) { identifyForm.removeChild(identifyForm.firstChild); }
    identifyForm.appendChild(el("p", {}, t.identify));
    ["name", "phone", "email"].forEach(function (field) {
      var id = "chat-" + field;
      var needed = require.indexOf(field) >= 0;
      identifyForm.appendChild(el("label", { "for": id }, t[field] + (needed ? " *" : "")));
      var input = el("input", { id: id, name: field, type: field === "phone" ? "tel" : field === "email" ? "email" : "text",
                                autocomplete: field === "phone" ? "tel" : field });
      if (needed) { input.setAttribute("required", ""); input.setAttribute("aria-required", "true"); }
      if (visitor[field]) { input.value = visitor[field]; }
      identifyForm.appendChild(input);
    });
    identifyForm.appendChild(el("p", {}, t.optional));
    identifyForm.appendChild(el("button", { type: "submit" }, t.start));
    identifyForm.hidden = false;
    compose.hidden = true;
    var first = identifyForm.querySelector("input");
    if (first && !panel.hidden) { first.focus(); }
  }

  function needsIdentity() {
    var require = (widgetConfig && widgetConfig.require) || [];
    return require.some(function (field) { return !visitor[field]; });
  }

  function onFrame(frame) {
    if (frame.type === "welcome") {
      state.token = frame.token;
      save(state);
      if (frame["new"]) { log.textContent = ""; shown = {}; cursor = 0; }
      widgetConfig = frame.widget;
      visitor = frame.visitor || {};
      applyTexts(widgetConfig);
      if (needsIdentity()) { askIdentity(); }
      setStatus("");
      retryMs = 1000;
      Object.keys(pending).forEach(transmit);  // resent: stored once by their ids
    } else if (frame.type === "history") {
      (frame.messages || []).forEach(show);
      cursor = Math.max(cursor, frame.cursor || 0);
    } else if (frame.type === "message") {
      show(frame);
    } else if (frame.type === "ack") {
      acknowledged(frame);
    } else if (frame.type === "token") {
      state.token = frame.token;
      save(state);
      visitor = frame.visitor || {};
      if (!needsIdentity()) {
        identifyForm.hidden = true;
        compose.hidden = false;
        text.focus();
      }
    } else if (frame.type === "error") {
      failed(frame);
    }
  }

  function connect() {
    started = true;
    var url = new URL("/chat/" + encodeURIComponent(KEY) + "/socket", ORIGIN);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("after", String(cursor));
    if (state.token) { url.searchParams.set("token", state.token); }
    ws = new WebSocket(url.toString());
    ws.onmessage = function (event) {
      try { onFrame(JSON.parse(event.data)); } catch (e) { /* a frame we cannot read */ }
    };
    ws.onclose = function () {
      ws = null;
      setStatus(t.reconnecting);
      var wait = retryMs * (0.5 + Math.random() / 2);
      retryMs = Math.min(retryMs * 2, 30000);
      setTimeout(connect, wait);
    };
  }

  function open() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    if (!started) { setStatus(t.connecting); connect(); }
    reportSoon();
    var first = !identifyForm.hidden ? identifyForm.querySelector("input") : text;
    if (first) { first.focus(); }
  }
  function close() {
    if (PAGE) { return; }
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.focus();
  }

  launcher.addEventListener("click", function () { if (panel.hidden) { open(); } else { close(); } });
  closeButton.addEventListener("click", close);
  panel.addEventListener("keydown", function (event) {
    if (event.key === "Escape") { event.preventDefault(); close(); }
  });
  compose.addEventListener("submit", function (event) {
    event.preventDefault();
    var value = text.value.trim();
    if (!value) { return; }
    text.value = "";
    sendText(value);
    text.focus();
  });
  text.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      compose.requestSubmit();
    }
  });
  fileInput.addEventListener("change", function () {
    var file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (file) { sendFile(file); }
  });
  identifyForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var details = { type: "identify" };
    ["name", "phone", "email"].forEach(function (field) {
      var input = identifyForm.querySelector("[name=" + field + "]");
      details[field] = input ? input.value.trim() : "";
    });
    if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(details)); }
  });

  function mount() {
    document.body.appendChild(host);
    // The standalone page is the chat; a returning visitor's chat connects at once so their
    // replies arrive live.
    if (PAGE) { open(); } else if (state.token) { connect(); }
  }
  if (document.body) { mount(); } else { document.addEventListener("DOMContentLoaded", mount); }
}());
