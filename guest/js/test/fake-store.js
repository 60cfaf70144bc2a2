// An in-memory stand-in for the store imports, with the bindings' error
// convention (an Error whose `payload` is the WIT `error` as `{ tag, val }`).
// The tests resolve 'worldinterface:contextstore/store@0.1.0' to this file.

class ComponentError extends Error {
  constructor(payload) {
    super(payload.tag);
    this.payload = payload;
  }
}

export const state = { outputs: new Map(), globals: new Map(), fail: undefined };

function check() {
  if (state.fail !== undefined) throw new ComponentError(state.fail);
}

export function put(run, node, text) {
  check();
  JSON.parse(text); // the host refuses invalid JSON
  const key = `${run}/${node}`;
  if (state.outputs.has(key)) throw new ComponentError({ tag: 'already-exists' });
  state.outputs.set(key, text);
}

export function get(run, node) {
  check();
  return state.outputs.get(`${run}/${node}`);
}

export function listKeys(run) {
  check();
  return [...state.outputs.keys()].filter((k) => k.startsWith(`${run}/`)).map((k) => k.slice(run.length + 1));
}

export function putGlobal(key, text) {
  check();
  if (state.globals.has(key)) throw new ComponentError({ tag: 'global-already-exists' });
  state.globals.set(key, text);
}

export function upsertGlobal(key, text) {
  check();
  state.globals.set(key, text);
}

export function getGlobal(key) {
  check();
  return state.globals.get(key);
}
