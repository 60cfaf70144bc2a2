// The contextstore step SDK for JavaScript: the Rust SDK's shape over the
// jco bindings of the `step` world (`wit/store.wit`).
//
// A step is a function of a `Context`:
//
//     import { exportStep } from './contextstore-step.js';
//
//     export const run = exportStep((ctx) => {
//       const { greeting } = ctx.upstream('greet'); // the upstream named `greet`
//       ctx.output({ shout: greeting.toUpperCase() }); // this node's one output
//     });
//
// Values go in and out as JS values (JSON.parse / JSON.stringify).
//
// Errors are exceptions:
// - a store call that fails throws a `StoreError` (`kind` is the WIT case:
//   'already-exists', 'global-already-exists', 'invalid-id', 'invalid-json',
//   'access-denied', 'quota-exceeded', 'storage'; `message` the host's text);
// - a step fails by throwing `InvalidParams` or `Failed` (`MissingUpstream`
//   and `EncodeError` are `Failed`).
//
// When an error leaves the step, `exportStep` answers the host with the WIT
// `step-error`: a `StoreError` as `store(<error>)` unchanged, `InvalidParams`
// as `invalid-params`, `Failed` as `failed`, anything else as
// `failed("<Name>: <message>")` (the engine's console goes nowhere, so a trap
// would lose the message). Returning means `ok`: the host then checks that
// the output is stored. `AlreadyExists` from `ctx.output` means a retried
// invocation already stored this node's output; letting it leave the step is
// right: the host reports the node done.
//
// The raw store calls are exported functions over JS values (`put`, `get`,
// `listKeys`, `putGlobal`, `upsertGlobal`, `getGlobal`) and over JSON text as
// written (`putText`, `getText`, `putGlobalText`, `upsertGlobalText`,
// `getGlobalText`).

import * as wit from 'worldinterface:contextstore/store@0.1.0';

/** A store call failed. `kind` is the WIT `error` case, `payload` the binding's `{ tag, val }`. */
export class StoreError extends Error {
  constructor(payload) {
    const message = typeof payload.val === 'string' ? payload.val : '';
    super(message ? `${payload.tag}: ${message}` : payload.tag);
    this.name = 'StoreError';
    /** The WIT case, e.g. 'access-denied'. */
    this.kind = payload.tag;
    /** The host's text ('' for the cases without one). */
    this.detail = message;
    /** The WIT `error` value, passed back unchanged when it leaves the step. */
    this.payload = payload;
  }
}

/** The WIT `error` cases, in the WIT's order. */
export const STORE_ERROR_KINDS = Object.freeze([
  'already-exists',
  'global-already-exists',
  'invalid-id',
  'invalid-json',
  'access-denied',
  'quota-exceeded',
  'storage',
]);

/** The step's parameters are not what it needs: `invalid-params`. */
export class InvalidParams extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidParams';
  }
}

/** Any other failure, described for a person: `failed`. */
export class Failed extends Error {
  constructor(message) {
    super(message);
    this.name = 'Failed';
  }
}

/** No upstream of that name, or it has no output yet (a `Failed`). */
export class MissingUpstream extends Failed {
  constructor(message) {
    super(`missing-upstream: ${message}`);
    this.name = 'MissingUpstream';
  }
}

/** A value has no JSON form (undefined, a function, a BigInt, a cycle) (a `Failed`). */
export class EncodeError extends Failed {
  constructor(message) {
    super(`encode: ${message}`);
    this.name = 'EncodeError';
  }
}

/** Calls a store binding; its error becomes a `StoreError`. */
function call(fn, ...args) {
  try {
    return fn(...args);
  } catch (e) {
    if (e && e.payload && STORE_ERROR_KINDS.includes(e.payload.tag)) {
      throw new StoreError(e.payload);
    }
    throw e;
  }
}

function encode(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw new EncodeError(e.message);
  }
  if (text === undefined) throw new EncodeError(`${typeof value} has no JSON form`);
  return text;
}

function decode(text) {
  return text === undefined ? undefined : JSON.parse(text);
}

/** Writes a node's output as JSON text (write-once: 'already-exists'). */
export const putText = (flowRunId, nodeId, text) => call(wit.put, flowRunId, nodeId, text);
/** A node's output as the exact text written; `undefined` if not written. */
export const getText = (flowRunId, nodeId) => call(wit.get, flowRunId, nodeId);
/** The node ids with an output in `flowRunId`, in no set order. */
export const listKeys = (flowRunId) => call(wit.listKeys, flowRunId);
/** Writes a global as JSON text (write-once: 'global-already-exists'). */
export const putGlobalText = (key, text) => call(wit.putGlobal, key, text);
/** Writes or overwrites a global as JSON text. */
export const upsertGlobalText = (key, text) => call(wit.upsertGlobal, key, text);
/** A global as the exact text written; `undefined` if not written. */
export const getGlobalText = (key) => call(wit.getGlobal, key);

/** Writes a node's output (write-once: 'already-exists'). */
export const put = (flowRunId, nodeId, value) => putText(flowRunId, nodeId, encode(value));
/** A node's output; `undefined` if not written. */
export const get = (flowRunId, nodeId) => decode(getText(flowRunId, nodeId));
/** Writes a global (write-once: 'global-already-exists'). */
export const putGlobal = (key, value) => putGlobalText(key, encode(value));
/** Writes or overwrites a global. */
export const upsertGlobal = (key, value) => upsertGlobalText(key, encode(value));
/** A global; `undefined` if not written. */
export const getGlobal = (key) => decode(getGlobalText(key));

/** One run of one step: its ids, parameters and named upstream nodes. */
export class Context {
  constructor(invocation) {
    /** The flow run this step belongs to (hyphenated UUID). */
    this.flowRunId = invocation.flowRunId;
    /** This step's node id: the one key it may `put`. */
    this.nodeId = invocation.nodeId;
    /** The parameters as JSON text, as the host passed them ('null' when none). */
    this.paramsJson = invocation.params;
    /** The upstream nodes, name to node id. */
    this.upstreams = new Map();
    for (const u of invocation.upstream) {
      if (!this.upstreams.has(u.name)) this.upstreams.set(u.name, u.nodeId); // the first of a name wins
    }
  }

  /** The parameters as a JS value; `fallback` when they are `null`. */
  params(fallback = null) {
    let value;
    try {
      value = JSON.parse(this.paramsJson);
    } catch (e) {
      throw new InvalidParams(`params are not JSON: ${e.message}`);
    }
    return value === null ? fallback : value;
  }

  /** The node id of the upstream named `name`, or `undefined`. */
  upstreamId(name) {
    return this.upstreams.get(name);
  }

  /**
   * The output of the upstream named `name`. `MissingUpstream` if there is
   * no upstream of that name or it has no output yet.
   */
  upstream(name) {
    const nodeId = this.upstreams.get(name);
    if (nodeId === undefined) throw new MissingUpstream(`no upstream named \`${name}\``);
    const text = getText(this.flowRunId, nodeId);
    if (text === undefined) {
      throw new MissingUpstream(`upstream \`${name}\` (${nodeId}) has no output yet`);
    }
    return JSON.parse(text);
  }

  /** Writes this node's output, once ('already-exists' the second time). */
  output(value) {
    put(this.flowRunId, this.nodeId, value);
  }
}

/** The WIT `step-error` value the host gets for an error thrown by a step. */
export function toStepError(error) {
  if (error instanceof StoreError) return { tag: 'store', val: error.payload };
  // A raw binding's store error, or a step-error thrown as jco expects it.
  if (error && error.payload && STORE_ERROR_KINDS.includes(error.payload.tag)) {
    return { tag: 'store', val: error.payload };
  }
  if (error && error.payload && ['invalid-params', 'store', 'failed'].includes(error.payload.tag)) {
    return error.payload;
  }
  if (error instanceof InvalidParams) return { tag: 'invalid-params', val: error.message };
  if (error instanceof Failed) return { tag: 'failed', val: error.message };
  const name = error && error.name ? error.name : 'Error';
  const message = error && error.message !== undefined ? error.message : String(error);
  return { tag: 'failed', val: `${name}: ${message}` };
}

/** The error jco turns into the WIT `err(step-error)`. */
class StepFailure extends Error {
  constructor(payload) {
    super(`${payload.tag}: ${typeof payload.val === 'string' ? payload.val : payload.val.tag}`);
    this.payload = payload;
  }
}

/**
 * Makes the component's `run` export from a step function:
 * `export const run = exportStep((ctx) => { ... })`.
 */
export function exportStep(step) {
  return function run(invocation) {
    try {
      step(new Context(invocation));
    } catch (e) {
      throw new StepFailure(toStepError(e));
    }
  };
}

/**
 * Runs the SDK once for the engine's snapshot. `componentize.mjs` builds a
 * component by running the step module in the engine and snapshotting it;
 * just before the snapshot, its bindings call this through the component's
 * `run` export, with an invocation they made up and every store call faked
 * (a first time all succeeding with nothing stored, a second time all
 * failing). SpiderMonkey compiles a function on its first call and creates
 * much of its machinery (iterators, shapes, builtins) on first use, and a
 * step starts from the snapshot every time: run here, all of that is ready
 * in it instead of being redone by every step. Steps never call it.
 */
function warmUp(invocation) {
  const attempt = (f) => {
    try {
      return f();
    } catch (e) {
      return toStepError(e);
    }
  };
  const errors = [
    new InvalidParams('warm-up'),
    new MissingUpstream('warm-up'),
    new EncodeError('warm-up'),
    new TypeError('warm-up'),
    { payload: { tag: 'storage', val: 'warm-up' } },
    { payload: { tag: 'failed', val: 'warm-up' } },
  ];
  for (const error of errors) {
    attempt(() =>
      exportStep(() => {
        throw error;
      })(invocation),
    );
  }
  exportStep((ctx) => {
    const value = ctx.params({});
    const [name] = ctx.upstreams.keys();
    ctx.upstreamId(name);
    attempt(() => ctx.upstream(name)); // nothing stored: MissingUpstream
    attempt(() => ctx.upstream('')); // no such upstream
    attempt(() => ctx.output(undefined)); // EncodeError
    get(ctx.flowRunId, ctx.nodeId); // all failing: the StoreError leaves the step
    listKeys(ctx.flowRunId);
    getGlobal(name);
    putGlobal(name, value);
    upsertGlobal(name, value);
    ctx.output({ ...value, name, text: `${ctx.nodeId}: ${JSON.stringify(value)}` });
  })(invocation);
}

// Where componentize.mjs's bindings find `warmUp` (and delete it after).
Object.defineProperty(globalThis, Symbol.for('contextstore-step.warm-up'), {
  configurable: true,
  value: warmUp,
});
