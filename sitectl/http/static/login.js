// sitectl dashboard: signing in where the API's reads are closed (http.open_reads: false).
// The token typed in goes once to POST /api/login; the server answers with an HttpOnly session
// cookie that reads only. The page keeps no token: not in localStorage, not in a variable.
"use strict";

const signIn = {
  // True while the sign-in form is up (or while it is not yet known whether it is needed):
  // the dashboard's polling waits.
  waiting: true,
  resume: () => {},
  wasSignedIn: false,

  // Asks whether this browser may read, shows the form if not, else lets polling run.
  async start(resume) {
    if (resume) this.resume = resume;
    this.waiting = true;
    let view = null;
    try {
      const response = await fetch("/api/login", { headers: { Accept: "application/json" } });
      if (response.ok) view = await response.json();
    } catch (error) {
      view = null;  // unreachable: the dashboard's own poll says so
    }
    this.account(view);
    if (view && !view.reads && view.login_available) {
      this.show("");
    } else {
      this.waiting = false;
      this.resume();
    }
  },

  // A read was refused (401/403): the form, with why. Returns the error for the caller to
  // throw, so the poll stops there.
  async refused(response) {
    const error = new Error(`HTTP ${response.status}`);
    error.signIn = true;
    if (this.waiting) return error;  // another read of the same poll brought the form up
    this.waiting = true;
    let message = "";
    if (response.status === 401) {
      message = this.wasSignedIn ? "the session has ended: sign in again" : "";
    } else {
      message = await response.json().then((body) => body.error ?? "", () => "");
    }
    this.wasSignedIn = false;
    this.account(null);
    this.show(message);
    return error;
  },

  show(message) {
    this.waiting = true;
    document.body.dataset.auth = "sign-in";
    document.getElementById("sign-in").hidden = false;
    document.getElementById("sign-in-error").textContent = message;
    document.getElementById("headline").textContent = "sign in to see the site";
    document.getElementById("sign-in-token").focus();
  },

  // "signed in · reads only · sign out" in the header while a session is live.
  account(view) {
    const on = Boolean(view && view.signed_in);
    if (on) this.wasSignedIn = true;
    document.getElementById("account").hidden = !on;
    document.body.dataset.auth = on ? "signed-in" : "";
    if (on) {
      const which = view.via === "read_token" ? "read token" : "token";
      document.getElementById("account-text").textContent =
        `signed in with the ${which} · reads only`;
    }
  },

  async submit(event) {
    event.preventDefault();
    const input = document.getElementById("sign-in-token");
    const button = document.getElementById("sign-in-button");
    const error = document.getElementById("sign-in-error");
    button.disabled = true;
    error.textContent = "";
    try {
      const response = await fetch("/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token: input.value }),
      });
      const view = await response.json().catch(() => ({}));
      if (!response.ok) {
        error.textContent = response.status === 401 ? "wrong token"
          : view.error ?? `sign-in refused: HTTP ${response.status}`;
        return;
      }
      input.value = "";
      document.getElementById("sign-in").hidden = true;
      document.getElementById("headline").textContent = "connecting…";
      this.account(view);
      this.waiting = false;
      this.resume();
    } catch (failure) {
      error.textContent = `cannot reach sitectl: ${failure.message}`;
    } finally {
      button.disabled = false;
    }
  },

  async signOut(event) {
    event.preventDefault();
    try {
      await fetch("/api/logout", { method: "POST", headers: { Accept: "application/json" } });
    } catch (error) {
      // Unreachable: the session ends on its own (idle expiry); ask again below.
    }
    this.wasSignedIn = false;
    await this.start();
  },
};

document.getElementById("sign-in-form").addEventListener("submit", (e) => signIn.submit(e));
document.getElementById("sign-out").addEventListener("click", (e) => signIn.signOut(e));
