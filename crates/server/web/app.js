// dyad's browser client: one file, no build step, no dependencies.
//
// Everything the user sees is drawn from `state` by the render functions;
// every text a user wrote goes into the page through `textContent`, never as
// HTML. Messages written while offline wait in an outbox kept in
// localStorage and go out with their `client_msg_id` once the socket is back,
// so the server stores each one once however often it is sent.
"use strict";

const API = "/api/v1";
const HISTORY_PAGE = 50;
const TYPING_SHOWN_MS = 4000;
const TYPING_SEND_EVERY_MS = 2000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;
// Codes after which resending the same message can never succeed.
const FINAL_ERRORS = new Set(["empty_message", "message_too_long", "unknown_recipient", "invalid_payload", "frame_too_large", "blocked"]);

const $ = (id) => document.getElementById(id);

const state = {
  blocked: new Set(), // user ids this user blocks
  session: null, // {token, user_id, username, expires_at}
  ws: null,
  link: "offline", // offline | connecting | online
  attempt: 0,
  reconnectTimer: null,
  lastFrameAt: 0,
  heartbeatMs: 30000,
  livenessTimer: null,
  // user_id -> {user_id, username, last_message, presence: {status, last_seen}, unread, typingUntil}
  peers: new Map(),
  open: null, // user_id of the open conversation
  // user_id -> {byId: Map(message_id -> message), hasMore, loading, loaded,
  //   before: the timestamp the next page back starts from}
  chats: new Map(),
  outbox: [], // [{client_msg_id, recipient_id, message, client_timestamp, status, error, sentOn}]
  connectionSerial: 0,
  pendingAcks: new Set(),
  refreshPending: false,
  lastTypingSent: 0,
  editing: null, // {message_id, peer}: the composer edits this message
  menuFor: null, // message_id whose menu is open
  search: null, // {query, messages} while search results are shown
  settingsOpen: false,
};

// A message's status only moves forward.
const STATUS_RANK = { queued: 0, sent: 1, delivered: 2, read: 3 };

// ---------------------------------------------------------------- storage

const SESSION_KEY = "dyad.session";
const outboxKey = () => `dyad.outbox.${state.session.user_id}`;

function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY));
    if (s && s.token && s.expires_at > Date.now()) return s;
  } catch (_) { /* a damaged entry is the same as none */ }
  localStorage.removeItem(SESSION_KEY);
  return null;
}

function saveOutbox() {
  localStorage.setItem(outboxKey(), JSON.stringify(state.outbox.map(({ sentOn, ...item }) => item)));
}

function loadOutbox() {
  try {
    const items = JSON.parse(localStorage.getItem(outboxKey()));
    return Array.isArray(items) ? items : [];
  } catch (_) {
    return [];
  }
}

// ------------------------------------------------------------------- REST

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.session) headers.Authorization = `Bearer ${state.session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (_) {
    throw new ApiError(0, "network", "The server cannot be reached.");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    if (response.status === 401 && state.session && path !== "/sessions") signedOut();
    throw new ApiError(response.status, error.code || "http_" + response.status, error.message || response.statusText);
  }
  return data;
}

// --------------------------------------------------------------- accounts

async function submitAuth(event) {
  event.preventDefault();
  const action = event.submitter ? event.submitter.value : "login";
  const username = $("username").value.trim();
  const password = $("password").value;
  $("auth-error").textContent = "";
  try {
    if (action === "register") await api("POST", "/users", { username, password });
    const s = await api("POST", "/sessions", { username, password });
    state.session = { token: s.token, user_id: s.user_id, username: username.toLowerCase(), expires_at: s.expires_at };
    localStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    $("password").value = "";
    signedIn();
  } catch (e) {
    $("auth-error").textContent = e.message;
  }
}

async function logout() {
  try {
    await api("DELETE", "/sessions/current");
  } catch (_) { /* the token is dropped here either way */ }
  signedOut();
}

function signedIn() {
  state.outbox = loadOutbox();
  $("auth").hidden = true;
  $("app").hidden = false;
  $("me").textContent = state.session.username;
  refreshConversations();
  connect();
  render();
}

function signedOut() {
  localStorage.removeItem(SESSION_KEY);
  state.session = null;
  disconnect();
  state.peers.clear();
  state.chats.clear();
  state.open = null;
  state.outbox = [];
  state.search = null;
  state.editing = null;
  $("app").hidden = true;
  $("auth").hidden = false;
  $("message-list").replaceChildren();
  $("conversations").replaceChildren();
}

// -------------------------------------------------------------- WebSocket

function connect() {
  if (!state.session) return;
  clearTimeout(state.reconnectTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // The token rides as a subprotocol, not in the URL, which logs keep.
  const ws = new WebSocket(`${scheme}//${location.host}${API}/ws`, ["dyad.v1", `bearer.${state.session.token}`]);
  state.ws = ws;
  state.link = "connecting";
  let opened = false;
  ws.onmessage = (frame) => {
    state.lastFrameAt = Date.now();
    let envelope;
    try {
      envelope = JSON.parse(frame.data);
    } catch (_) {
      return;
    }
    if (envelope.event === "connected") opened = true;
    onEvent(envelope.event, envelope.data || {});
  };
  ws.onclose = (close) => {
    if (state.ws !== ws) return;
    state.ws = null;
    state.link = "offline";
    clearInterval(state.livenessTimer);
    render();
    if (close.code === 1008 || !opened) {
      // Revoked, or refused before `connected` (perhaps 401): a REST call
      // tells which, and signs out if the token is gone.
      refreshConversations();
    }
    scheduleReconnect();
  };
  renderLink();
}

/** Closes the socket on purpose: no reconnect follows. */
function disconnect() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.livenessTimer);
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close(1000);
  }
  state.ws = null;
  state.link = "offline";
}

function scheduleReconnect() {
  if (!state.session) return;
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
  const delay = ceiling / 2 + Math.random() * ceiling / 2;
  state.attempt += 1;
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(connect, delay);
}

function send(event, data) {
  if (state.ws && state.link === "online") {
    state.ws.send(JSON.stringify({ event, data }));
    return true;
  }
  return false;
}

function onEvent(event, data) {
  switch (event) {
    case "connected": return onConnected(data);
    case "receive_message": return onMessage(data);
    case "message_ack": return onAck(data);
    case "message_delivered": return onDelivered(data);
    case "presence": return onPresence(data);
    case "typing": return onTyping(data);
    case "message_read": return onRead(data);
    case "message_edited": return onChanged(data, { message: data.message, edited_at: data.edited_at });
    case "message_deleted": return onChanged(data, { message: "", deleted: true });
    case "error": return onError(data);
    default: return undefined; // pending_complete, pong: nothing to draw
  }
}

function onConnected(data) {
  state.link = "online";
  state.attempt = 0;
  state.connectionSerial += 1;
  state.heartbeatMs = data.heartbeat_interval_ms || 30000;
  clearInterval(state.livenessTimer);
  // Browsers answer the server's pings without telling the page, so the
  // page checks the link itself: a ping event, and a reconnect if nothing
  // came back for two intervals (a laptop that slept, a dead Wi-Fi).
  state.livenessTimer = setInterval(() => {
    if (Date.now() - state.lastFrameAt > 2 * state.heartbeatMs && state.ws) {
      state.ws.close();
      return;
    }
    send("ping", {});
  }, state.heartbeatMs);
  const watched = [...state.peers.keys()];
  if (watched.length) send("subscribe_presence", { user_ids: watched });
  flushOutbox();
  // Statuses may have changed while the link was down (a delivered tick is
  // only pushed to connections that saw the message): fetch them again, once
  // the resent outbox is acked, so that a message is never drawn both from
  // history and from the outbox.
  state.refreshPending = true;
  refreshWhenSettled();
  renderLink();
}

function refreshWhenSettled() {
  if (!state.refreshPending) return;
  if (state.outbox.some((i) => i.status === "queued" && i.sentOn === state.connectionSerial)) return;
  state.refreshPending = false;
  refreshConversations();
  if (state.open) loadNewest(state.open);
}

function peerOf(message) {
  return message.sender_id === state.session.user_id ? message.recipient_id : message.sender_id;
}

function onMessage(message) {
  const peerId = peerOf(message);
  const incoming = message.sender_id !== state.session.user_id;
  if (incoming) ackDelivery(message.message_id);
  const isNew = storeMessage(peerId, message);
  let peer = state.peers.get(peerId);
  if (!peer) {
    // Someone new: counted now; the list call brings the username.
    peer = addPeer(peerId, "", null);
    refreshConversations();
  }
  setLastMessage(peer, message);
  if (incoming) peer.typingUntil = 0;
  if (isNew && incoming && message.seq > (peer.lastReadSeq || 0)) {
    if (reading(peerId)) markRead(peerId);
    // The server's count covers everything up to the last message it listed.
    else if (message.seq > (peer.countedSeq || 0)) peer.unread = (peer.unread || 0) + 1;
    peer.countedSeq = Math.max(peer.countedSeq || 0, message.seq);
    if (document.hidden) notify(peer, message);
  }
  render();
}

/** Whether the user is looking at the chat with `peerId` right now. */
function reading(peerId) {
  return state.open === peerId && document.visibilityState === "visible";
}

/** Tells the server the user has read the chat up to its newest message from the other side. */
function markRead(peerId) {
  const peer = state.peers.get(peerId);
  if (!peer) return;
  const incoming = [...chatOf(peerId).byId.values()].filter((m) => m.sender_id === peerId);
  if (peer.last_message && peer.last_message.sender_id === peerId) incoming.push(peer.last_message);
  const newest = incoming.reduce((a, m) => (!a || m.seq > a.seq ? m : a), null);
  if (!newest || newest.seq <= (peer.lastReadSeq || 0)) return;
  if (send("read_ack", { message_id: newest.message_id })) {
    peer.lastReadSeq = newest.seq;
    peer.unread = 0;
  }
}

/** `message_read`: this user read on some device, or the other user read. */
function onRead(data) {
  const me = state.session.user_id;
  if (data.reader_id === me) {
    const peer = state.peers.get(data.peer_id);
    if (peer && data.seq > (peer.lastReadSeq || 0)) {
      peer.lastReadSeq = data.seq;
      // The count is the server's: the same on every device.
      refreshConversations();
    }
  } else {
    const peer = state.peers.get(data.reader_id);
    if (peer) {
      peer.peerReadSeq = Math.max(peer.peerReadSeq || 0, data.seq);
      applyPeerRead(peer);
    }
  }
  render();
}

/** Marks this user's messages that the other has read as read. */
function applyPeerRead(peer) {
  const upto = peer.peerReadSeq || 0;
  const mine = (m) => m && m.sender_id === state.session.user_id && m.seq <= upto;
  for (const m of chatOf(peer.user_id).byId.values()) if (mine(m)) m.status = "read";
  if (mine(peer.last_message)) peer.last_message.status = "read";
}

/** `message_edited` / `message_deleted`: the message as it is now. */
function onChanged(data, change) {
  const peerId = peerOf(data);
  const message = chatOf(peerId).byId.get(data.message_id);
  if (message) Object.assign(message, change);
  const peer = state.peers.get(peerId);
  if (peer && peer.last_message && peer.last_message.message_id === data.message_id) {
    peer.last_message = { ...peer.last_message, ...change };
  }
  if (state.editing && state.editing.message_id === data.message_id && change.deleted) stopEditing();
  render();
}

/** A desktop notification, if the user allowed them (asked only after a click). */
function notify(peer, message) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const note = new Notification(peer.username || "dyad", { body: message.message, tag: peer.user_id });
  note.onclick = () => { window.focus(); openChat(peer.user_id); note.close(); };
}

function ackDelivery(messageId) {
  // Gather the acks of one burst (the replay) into one frame.
  if (state.pendingAcks.size === 0) {
    queueMicrotask(() => {
      const ids = [...state.pendingAcks];
      state.pendingAcks.clear();
      send("delivery_ack", { message_ids: ids });
    });
  }
  state.pendingAcks.add(messageId);
}

function onAck(ack) {
  const index = state.outbox.findIndex((item) => item.client_msg_id === ack.client_msg_id);
  if (index < 0) return;
  const [item] = state.outbox.splice(index, 1);
  saveOutbox();
  const message = {
    message_id: ack.message_id,
    sender_id: state.session.user_id,
    recipient_id: ack.recipient_id,
    message: item.message,
    timestamp: ack.timestamp,
    seq: ack.seq,
    status: ack.status,
    client_msg_id: ack.client_msg_id,
  };
  storeMessage(ack.recipient_id, message);
  const peer = state.peers.get(ack.recipient_id);
  if (peer) setLastMessage(peer, message);
  render();
  refreshWhenSettled();
}

function onDelivered(data) {
  const forward = (m) => { if (m && (STATUS_RANK[m.status] || 0) < STATUS_RANK.delivered) m.status = "delivered"; };
  const chat = state.chats.get(data.recipient_id);
  forward(chat && chat.byId.get(data.message_id));
  const peer = state.peers.get(data.recipient_id);
  if (peer && peer.last_message && peer.last_message.message_id === data.message_id) forward(peer.last_message);
  render();
}

function onPresence(data) {
  const peer = state.peers.get(data.user_id);
  if (!peer) return;
  peer.presence = { status: data.status, last_seen: data.last_seen };
  if (data.status !== "online") peer.typingUntil = 0;
  render();
}

function onTyping(data) {
  const peer = state.peers.get(data.sender_id);
  if (!peer) return;
  peer.typingUntil = Date.now() + TYPING_SHOWN_MS;
  render();
  setTimeout(render, TYPING_SHOWN_MS + 50);
}

function onError(error) {
  const item = error.client_msg_id && state.outbox.find((i) => i.client_msg_id === error.client_msg_id);
  if (!item) return;
  if (FINAL_ERRORS.has(error.code)) {
    item.status = "failed";
    item.error = error.message;
    saveOutbox();
    render();
  } else {
    // rate_limited, unavailable: still queued; send it again a bit later.
    item.sentOn = 0;
    setTimeout(flushOutbox, error.retry_after_ms || 1000);
  }
  refreshWhenSettled();
}

// ----------------------------------------------------------------- sending

function newClientMsgId() {
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function submitMessage(event) {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value;
  if (!text.trim() || !state.open) return;
  if (state.editing) {
    // An edit goes out now or not at all: it is not queued offline.
    if (!send("edit_message", { message_id: state.editing.message_id, message: text })) return;
    stopEditing();
    return;
  }
  const chat = chatOf(state.open);
  chat.dividerSeq = null; // answering: the new ones are read
  state.outbox.push({
    client_msg_id: newClientMsgId(),
    recipient_id: state.open,
    message: text,
    client_timestamp: Date.now(),
    status: "queued",
    sentOn: 0,
  });
  saveOutbox();
  input.value = "";
  state.lastTypingSent = 0; // the other side stopped showing "typing…" on receipt
  autoGrow();
  flushOutbox();
  render(true);
}

function flushOutbox() {
  for (const item of state.outbox) {
    if (item.status !== "queued" || item.sentOn === state.connectionSerial) continue;
    const { client_msg_id, recipient_id, message, client_timestamp } = item;
    if (!send("send_message", { recipient_id, message, client_timestamp, client_msg_id })) return;
    item.sentOn = state.connectionSerial;
  }
}

function startEditing(message) {
  state.menuFor = null;
  state.editing = { message_id: message.message_id, peer: state.open };
  const input = $("message-input");
  input.value = message.message;
  autoGrow();
  input.focus();
  render();
}

function stopEditing() {
  state.editing = null;
  $("message-input").value = "";
  autoGrow();
  render();
}

function deleteMessage(message) {
  state.menuFor = null;
  send("delete_message", { message_id: message.message_id });
  render();
}

function discard(clientMsgId) {
  state.outbox = state.outbox.filter((item) => item.client_msg_id !== clientMsgId);
  saveOutbox();
  render();
}

function onComposerInput() {
  autoGrow();
  const now = Date.now();
  if (state.open && now - state.lastTypingSent > TYPING_SEND_EVERY_MS && $("message-input").value) {
    if (send("typing", { recipient_id: state.open })) state.lastTypingSent = now;
  }
}

function onComposerKey(event) {
  if (event.key === "Escape" && state.editing) {
    event.preventDefault();
    stopEditing();
    return;
  }
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

function autoGrow() {
  const input = $("message-input");
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight + 2, 140) + "px";
}

// ------------------------------------------------------ conversations/history

function chatOf(peerId) {
  let chat = state.chats.get(peerId);
  if (!chat) {
    chat = { byId: new Map(), hasMore: true, loading: false, loaded: false, before: null };
    state.chats.set(peerId, chat);
  }
  return chat;
}

/** Adds or updates a stored message; true when it was not there before. */
function storeMessage(peerId, message) {
  const chat = chatOf(peerId);
  const known = chat.byId.get(message.message_id);
  if (known) {
    // A status only moves forward: sent -> delivered -> read; text follows
    // the latest edit or the delete.
    if ((STATUS_RANK[message.status] || 0) > (STATUS_RANK[known.status] || 0)) known.status = message.status;
    if (message.deleted || (message.edited_at || 0) > (known.edited_at || 0)) {
      Object.assign(known, { message: message.message, edited_at: message.edited_at, deleted: message.deleted });
    }
    return false;
  }
  chat.byId.set(message.message_id, { ...message });
  return true;
}

function addPeer(userId, username, lastMessage) {
  let peer = state.peers.get(userId);
  if (!peer) {
    peer = { user_id: userId, username, last_message: null, presence: null, unread: 0, typingUntil: 0 };
    state.peers.set(userId, peer);
    send("subscribe_presence", { user_ids: [userId] });
  }
  peer.username = username;
  if (lastMessage) setLastMessage(peer, lastMessage);
  return peer;
}

/** The conversation's newest message, for the list (by seq: never older). */
function setLastMessage(peer, message) {
  if (!peer.last_message || peer.last_message.seq <= message.seq) peer.last_message = message;
}

/** The users this user blocks, for the chat header's button. */
async function refreshBlocks() {
  try {
    const { blocks } = await api("GET", "/blocks");
    state.blocked = new Set(blocks.map((b) => b.user_id));
    render();
  } catch (_) { /* offline: the next connect refreshes */ }
}

async function toggleBlock() {
  const peerId = state.open;
  if (!peerId) return;
  const blocking = !state.blocked.has(peerId);
  try {
    await api(blocking ? "PUT" : "DELETE", `/blocks/${encodeURIComponent(peerId)}`);
    if (blocking) state.blocked.add(peerId);
    else state.blocked.delete(peerId);
    render();
  } catch (_) { /* offline: nothing changed */ }
}

async function refreshConversations() {
  if (!state.session) return;
  refreshBlocks();
  try {
    const { conversations } = await api("GET", "/conversations");
    // The last message is for the list only: kept out of the chat, so that
    // when it then arrives (a replay) it still counts as unread. Unread
    // counts and read marks are the server's: the same on every device, and
    // after a reload.
    for (const c of conversations) {
      const peer = addPeer(c.user_id, c.username, c.last_message);
      peer.unread = c.unread_count;
      peer.countedSeq = Math.max(peer.countedSeq || 0, c.last_message.seq);
      peer.lastReadSeq = Math.max(peer.lastReadSeq || 0, c.last_read_seq || 0);
      peer.peerReadSeq = Math.max(peer.peerReadSeq || 0, c.peer_last_read_seq || 0);
      applyPeerRead(peer);
      if (reading(c.user_id)) markRead(c.user_id);
    }
    render();
  } catch (_) { /* offline: the next connect refreshes */ }
}

async function startChat(event) {
  event.preventDefault();
  const input = $("new-chat-name");
  const name = input.value.trim().toLowerCase();
  $("new-chat-error").textContent = "";
  if (name === state.session.username) {
    $("new-chat-error").textContent = "That is you.";
    return;
  }
  try {
    const user = await api("GET", `/users/by-username/${encodeURIComponent(name)}`);
    addPeer(user.user_id, user.username, null);
    input.value = "";
    openChat(user.user_id);
  } catch (e) {
    $("new-chat-error").textContent = e.code === "user_not_found" ? `No user named “${name}”.` : e.message;
  }
}

function openChat(peerId) {
  if (state.editing) stopEditing();
  state.open = peerId;
  state.menuFor = null;
  const peer = state.peers.get(peerId);
  const chat = chatOf(peerId);
  // "New messages" goes above the first one after the read mark.
  chat.dividerSeq = peer && peer.unread ? peer.lastReadSeq || 0 : null;
  if (peer) markRead(peerId);
  $("app").classList.add("chat-open");
  render(true);
  if (!chat.loaded) loadOlder(peerId);
  else loadNewest(peerId);
  $("message-input").focus();
}

function closeChat() {
  state.open = null;
  $("app").classList.remove("chat-open");
  render();
}

/** The next page back in time (or the first page). */
async function loadOlder(peerId) {
  const chat = chatOf(peerId);
  if (chat.loading || (chat.loaded && !chat.hasMore)) return;
  chat.loading = true;
  renderHistoryState();
  // Pages follow each other by the history's own cursor, never by the
  // oldest message shown: replayed and live messages may be far older than
  // the pages read so far, and paging from them would skip what lies between.
  const first = !chat.loaded;
  const query = `limit=${HISTORY_PAGE}` + (first ? "" : `&before=${chat.before}`);
  try {
    const page = await api("GET", `/messages/${encodeURIComponent(peerId)}?${query}`);
    for (const message of page.messages) storeMessage(peerId, message);
    if (reading(peerId)) markRead(peerId);
    if (page.messages.length) chat.before = page.messages[page.messages.length - 1].timestamp;
    chat.hasMore = page.has_more && page.messages.length > 0;
    chat.loaded = true;
  } catch (_) { /* offline: try again on the next scroll or connect */ }
  chat.loading = false;
  if (state.open !== peerId) return;
  render(first, !first);
  const box = $("messages");
  // A first page that does not fill the pane cannot be scrolled: go on.
  if (chat.loaded && chat.hasMore && box.scrollHeight <= box.clientHeight) loadOlder(peerId);
}

/** The newest page again: new messages and fresh statuses after a reconnect. */
async function loadNewest(peerId) {
  try {
    const page = await api("GET", `/messages/${encodeURIComponent(peerId)}?limit=${HISTORY_PAGE}`);
    for (const message of page.messages) storeMessage(peerId, message);
    if (reading(peerId)) markRead(peerId);
    if (state.open === peerId) render();
  } catch (_) { /* offline */ }
}

function onScroll() {
  if (state.open && $("messages").scrollTop < 60) loadOlder(state.open);
}

// ----------------------------------------------------------------- drawing

function sortedMessages(chat) {
  return [...chat.byId.values()].sort((a, b) => a.seq - b.seq);
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function day(ms) {
  const date = new Date(ms);
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return "Today";
  today.setDate(today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return "Yesterday";
  return date.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short", year: "numeric" });
}

function presenceText(presence) {
  if (!presence) return "";
  if (presence.status === "online") return "online";
  if (!presence.last_seen) return "offline";
  const ago = Date.now() - presence.last_seen;
  if (ago < 60000) return "last seen just now";
  if (ago < 3600000) return `last seen ${Math.floor(ago / 60000)} min ago`;
  if (new Date(presence.last_seen).toDateString() === new Date().toDateString()) {
    return `last seen today at ${clock(presence.last_seen)}`;
  }
  return `last seen ${day(presence.last_seen)} ${clock(presence.last_seen)}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** http(s) addresses in a text, not counting the punctuation that ends a sentence. */
const URL_PATTERN = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;

/**
 * A message's text with its web addresses as links. Built from text nodes
 * and anchors, never from HTML: the text cannot become markup.
 */
function textWithLinks(text) {
  const node = el("div", "text");
  let at = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    if (match.index > at) node.append(document.createTextNode(text.slice(at, match.index)));
    const link = el("a", null, match[0]);
    link.href = match[0];
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    node.append(link);
    at = match.index + match[0].length;
  }
  if (at < text.length) node.append(document.createTextNode(text.slice(at)));
  return node;
}

function renderLink() {
  const conn = $("conn-state");
  conn.className = "conn " + state.link;
  conn.title = state.link === "online" ? "connected" : state.link === "connecting" ? "connecting…" : "offline: reconnecting";
  document.body.dataset.link = state.link;
}

function renderConversations() {
  const list = $("conversations");
  // Most recent first; a conversation just started (no message yet) on top.
  const recency = (peer) => (peer.last_message ? peer.last_message.timestamp : Number.MAX_SAFE_INTEGER);
  const peers = [...state.peers.values()].sort((a, b) => recency(b) - recency(a));
  list.replaceChildren(...peers.map((peer) => {
    const item = el("li", "conv" + (peer.user_id === state.open ? " active" : ""));
    item.dataset.userId = peer.user_id;
    item.dataset.username = peer.username;
    item.dataset.unread = String(peer.unread || 0);
    // Offline, the last known presence may be stale: show none.
    const live = state.link === "online";
    const online = live && peer.presence && peer.presence.status === "online";
    item.append(el("span", "dot" + (online ? " online" : "")));
    const name = el("span", "name", peer.username);
    if (peer.unread) name.append(el("span", "unread", String(peer.unread)));
    item.append(name);
    const presence = !live ? "" : peer.typingUntil > Date.now() ? "typing…" : presenceText(peer.presence);
    item.append(el("span", "presence", presence));
    const last = peer.last_message;
    const text = last && (last.deleted ? "message deleted" : last.message);
    const preview = last ? (last.sender_id === state.session.user_id ? "You: " : "") + text : "No messages yet";
    item.append(el("span", "preview", preview));
    item.addEventListener("click", () => openChat(peer.user_id));
    return item;
  }));
}

function renderMessage(message, mine) {
  const node = el("div", "msg " + (mine ? "mine" : "theirs"));
  node.dataset.status = message.status;
  if (message.message_id) node.dataset.messageId = message.message_id;
  if (message.client_msg_id) node.dataset.clientMsgId = message.client_msg_id;
  if (message.deleted) {
    node.classList.add("deleted");
    node.append(el("div", "text", "message deleted"));
  } else {
    node.append(textWithLinks(message.message));
  }
  const meta = el("div", "meta");
  if (message.edited_at && !message.deleted) meta.append(el("span", "edited", "edited"));
  if (message.status === "failed") {
    meta.append(el("span", "failed", "not sent: " + (message.error || "refused")));
    const discardBtn = el("button", "link discard", "discard");
    discardBtn.type = "button";
    discardBtn.addEventListener("click", () => discard(message.client_msg_id));
    meta.append(discardBtn);
  } else {
    meta.append(el("span", "time", clock(message.timestamp || message.client_timestamp)));
  }
  if (mine) {
    // Grey ✓✓ delivered, blue ✓✓ read, as people know them.
    const ticks = { queued: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" }[message.status] || "";
    const tickNode = el("span", "ticks", ticks);
    tickNode.title = message.status === "queued" ? "waiting to be sent" : message.status;
    meta.append(tickNode);
  }
  if (mine && message.message_id && !message.deleted) {
    const menuBtn = el("button", "link menu-btn", "⋯");
    menuBtn.type = "button";
    menuBtn.title = "Edit or delete";
    menuBtn.addEventListener("click", () => {
      state.menuFor = state.menuFor === message.message_id ? null : message.message_id;
      render();
    });
    meta.append(menuBtn);
  }
  node.append(meta);
  if (state.menuFor === message.message_id) {
    const menu = el("div", "msg-menu");
    const edit = el("button", "link edit-btn", "Edit");
    edit.type = "button";
    edit.addEventListener("click", () => startEditing(message));
    const remove = el("button", "link delete-btn", "Delete");
    remove.type = "button";
    remove.addEventListener("click", () => deleteMessage(message));
    menu.append(edit, remove);
    node.append(menu);
  }
  return node;
}

function renderChat(stickToBottom, keepPosition) {
  const peer = state.open && state.peers.get(state.open);
  $("no-chat").hidden = Boolean(peer);
  $("chat-header").hidden = !peer;
  $("messages").hidden = !peer;
  $("composer").hidden = !peer;
  if (!peer) return;
  $("peer-name").textContent = peer.username;
  // Offline, the last known presence may be stale: say what is known.
  $("peer-presence").textContent = state.link === "online" ? presenceText(peer.presence) : "connecting…";
  $("offline-banner").hidden = state.link === "online";
  $("typing").hidden = !(peer.typingUntil > Date.now());
  const blocked = state.blocked.has(peer.user_id);
  $("block-btn").textContent = blocked ? "Unblock" : "Block";
  $("block-btn").dataset.blocked = String(blocked);
  $("message-input").disabled = blocked;
  $("message-input").placeholder = blocked ? `You block ${peer.username}: unblock to write.` : "Message";
  $("editing-banner").hidden = !state.editing;
  $("send-btn").textContent = state.editing ? "Save" : "Send";

  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const heightBefore = box.scrollHeight;
  const chat = chatOf(peer.user_id);
  const nodes = [];
  let lastDay = null;
  let divided = chat.dividerSeq === null || chat.dividerSeq === undefined;
  for (const message of sortedMessages(chat)) {
    const thisDay = day(message.timestamp);
    if (thisDay !== lastDay) nodes.push(el("div", "day", thisDay));
    lastDay = thisDay;
    const mine = message.sender_id === state.session.user_id;
    if (!divided && !mine && message.seq > chat.dividerSeq) {
      const divider = el("div", "divider", "New messages");
      divider.id = "new-messages";
      nodes.push(divider);
      divided = true;
    }
    nodes.push(renderMessage(message, mine));
  }
  for (const item of state.outbox) {
    if (item.recipient_id === peer.user_id) nodes.push(renderMessage(item, true));
  }
  $("message-list").replaceChildren(...nodes);
  renderHistoryState();
  if (keepPosition) box.scrollTop += box.scrollHeight - heightBefore;
  else if (stickToBottom || atBottom) box.scrollTop = box.scrollHeight;
}

function renderHistoryState() {
  const chat = state.open && state.chats.get(state.open);
  let text = "";
  if (chat && chat.loading) text = "Loading…";
  else if (chat && chat.loaded && !chat.hasMore) text = "Start of the conversation";
  $("history-state").textContent = text;
}

function render(stickToBottom = false, keepPosition = false) {
  if (!state.session) return;
  renderLink();
  renderConversations();
  renderSearch();
  renderChat(stickToBottom, keepPosition);
  const unread = [...state.peers.values()].reduce((n, p) => n + (p.unread || 0), 0);
  document.title = unread ? `(${unread}) dyad` : "dyad";
}

// ----------------------------------------------------------------- search

async function submitSearch(event) {
  event.preventDefault();
  const query = $("search-input").value.trim();
  if (!query) {
    state.search = null;
    render();
    return;
  }
  try {
    const page = await api("GET", `/search?q=${encodeURIComponent(query)}&limit=50`);
    state.search = { query, messages: page.messages };
  } catch (e) {
    state.search = { query, messages: [], error: e.message };
  }
  render();
}

function renderSearch() {
  const list = $("search-results");
  list.hidden = !state.search;
  $("conversations").hidden = Boolean(state.search);
  if (!state.search) return;
  const items = state.search.messages.map((m) => {
    const peerId = peerOf(m);
    const peer = state.peers.get(peerId);
    const item = el("li", "conv result");
    item.dataset.messageId = m.message_id;
    item.dataset.userId = peerId;
    const who = m.sender_id === state.session.user_id ? "You" : (peer && peer.username) || "";
    item.append(el("span", "name", `${who} · ${day(m.timestamp)} ${clock(m.timestamp)}`));
    item.append(el("span", "preview", m.message));
    item.addEventListener("click", () => {
      state.search = null;
      $("search-input").value = "";
      if (!state.peers.has(peerId)) addPeer(peerId, "", null);
      openChat(peerId);
    });
    return item;
  });
  if (!items.length) items.push(el("li", "conv muted", state.search.error || `Nothing found for “${state.search.query}”.`));
  list.replaceChildren(...items);
}

// --------------------------------------------------------------- settings

async function toggleSettings() {
  state.settingsOpen = !state.settingsOpen;
  $("settings").hidden = !state.settingsOpen;
  $("settings-note").textContent = "";
  if (!state.settingsOpen) return;
  try {
    const settings = await api("GET", "/users/me/settings");
    $("read-receipts").checked = settings.read_receipts;
    $("presence-setting").value = settings.presence;
    await refreshDevices();
  } catch (e) {
    $("settings-note").textContent = e.message;
  }
}

async function saveSettings() {
  const patch = { read_receipts: $("read-receipts").checked, presence: $("presence-setting").value };
  try {
    await api("PATCH", "/users/me/settings", patch);
    $("settings-note").textContent = "Saved.";
    refreshConversations(); // read marks may now show, or stop showing
  } catch (e) {
    $("settings-note").textContent = e.message;
  }
}

async function refreshDevices() {
  const { sessions } = await api("GET", "/sessions");
  $("devices").replaceChildren(...sessions.map((s) => {
    const item = el("li");
    item.dataset.sessionId = s.session_id;
    const since = `since ${day(s.created_at)}, last used ${day(s.last_used_at)} ${clock(s.last_used_at)}`;
    item.append(el("span", null, (s.current ? "This device · " : "") + since));
    if (!s.current) {
      const revoke = el("button", "link revoke-btn", "Log out");
      revoke.type = "button";
      revoke.addEventListener("click", async () => {
        try {
          await api("DELETE", `/sessions/${encodeURIComponent(s.session_id)}`);
          await refreshDevices();
        } catch (e) {
          $("settings-note").textContent = e.message;
        }
      });
      item.append(revoke);
    }
    return item;
  }));
}

async function changePassword(event) {
  event.preventDefault();
  const body = { current_password: $("current-password").value, new_password: $("new-password").value };
  try {
    await api("PUT", "/users/me/password", body);
    $("password-form").reset();
    $("settings-note").textContent = "Password changed; your other devices are logged out.";
    await refreshDevices();
  } catch (e) {
    $("settings-note").textContent = e.code === "invalid_credentials" ? "The current password is wrong." : e.message;
  }
}

async function deleteAccount(event) {
  event.preventDefault();
  try {
    await api("DELETE", "/users/me", { password: $("delete-password").value });
    $("delete-form").reset();
    state.settingsOpen = false;
    $("settings").hidden = true;
    signedOut();
  } catch (e) {
    $("settings-note").textContent = e.code === "invalid_credentials" ? "The password is wrong." : e.message;
  }
}

/** Asked only after a click, as browsers want. */
async function enableNotifications() {
  if (!("Notification" in window)) {
    $("settings-note").textContent = "This browser has no desktop notifications.";
    return;
  }
  const answer = await Notification.requestPermission();
  $("settings-note").textContent = answer === "granted" ? "Notifications on while this tab is in the background." : "Notifications are blocked.";
}

// ----------------------------------------------------------------- wiring

function main() {
  $("auth-form").addEventListener("submit", submitAuth);
  $("logout-btn").addEventListener("click", logout);
  $("new-chat").addEventListener("submit", startChat);
  $("composer").addEventListener("submit", submitMessage);
  $("message-input").addEventListener("input", onComposerInput);
  $("message-input").addEventListener("keydown", onComposerKey);
  $("messages").addEventListener("scroll", onScroll);
  $("back-btn").addEventListener("click", closeChat);
  $("block-btn").addEventListener("click", toggleBlock);
  $("search-form").addEventListener("submit", submitSearch);
  $("search-input").addEventListener("search", submitSearch);
  $("settings-btn").addEventListener("click", toggleSettings);
  $("read-receipts").addEventListener("change", saveSettings);
  $("presence-setting").addEventListener("change", saveSettings);
  $("password-form").addEventListener("submit", changePassword);
  $("delete-form").addEventListener("submit", deleteAccount);
  $("notify-btn").addEventListener("click", enableNotifications);
  // Back to the tab: what is on screen is read now.
  document.addEventListener("visibilitychange", () => { if (state.open && reading(state.open)) { markRead(state.open); render(); } });
  // Back online (as the browser sees it): try now instead of waiting.
  window.addEventListener("online", () => { if (state.session && !state.ws) connect(); });
  // Leaving the page closes the socket at once (a page kept in the
  // back-forward cache would otherwise look online); coming back reopens it.
  window.addEventListener("pagehide", disconnect);
  window.addEventListener("pageshow", (event) => { if (event.persisted && state.session) connect(); });
  setInterval(() => render(), 30000); // "last seen 3 min ago" ages
  state.session = loadSession();
  if (state.session) signedIn();
  else $("auth").hidden = false;
}

main();
