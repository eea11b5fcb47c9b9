// Cube dashboard: keeps each page's live parts fresh without reloading the page.
// Every element with data-poll="URL" is replaced by the HTML that URL answers, every
// two seconds. No build step, no dependency: this file is all the script there is.
"use strict";
(function () {
  const PERIOD = 2000;
  const banner = document.getElementById("connection");
  const login = document.body.dataset.login;

  function show(message) {
    if (banner.textContent !== message) banner.textContent = message;
    banner.hidden = false;
  }

  function hide() {
    banner.hidden = true;
    banner.textContent = "";
  }

  // A region the user is working in (focus inside: a link, a selection) is left alone
  // until they leave it, so the keyboard never loses its place.
  function busy(el) {
    const active = document.activeElement;
    return active && active !== document.body && active !== el && el.contains(active);
  }

  async function refresh(el) {
    if (busy(el)) return;
    let response;
    try {
      response = await fetch(el.dataset.poll, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html" },
      });
    } catch (err) {
      show("Lost the connection to the manager; retrying every 2 seconds.");
      return;
    }
    if (response.status === 401) {
      location.assign(login + "?next=" + encodeURIComponent(location.pathname));
      return;
    }
    const text = await response.text();
    if (!response.ok) {
      show("The manager answered " + response.status + ": " + text.slice(0, 300));
      return;
    }
    hide();
    if (el.dataset.last === text) return;
    el.dataset.last = text;
    const follow = "follow" in el.dataset &&
      el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    el.innerHTML = text;
    if (follow) el.scrollTop = el.scrollHeight;
  }

  function start() {
    const regions = document.querySelectorAll("[data-poll]");
    if (regions.length === 0) return;
    const tick = () => Promise.all([...regions].map(refresh));
    tick();
    setInterval(tick, PERIOD);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
