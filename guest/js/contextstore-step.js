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

// The store the calls below go to: the bindings, except while `warmUp` runs.
let store = wit;

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
export const putText = (flowRunId, nodeId, text) => call(store.put, flowRunId, nodeId, text);
/** A node's output as the exact text written; `undefined` if not written. */
export const getText = (flowRunId, nodeId) => call(store.get, flowRunId, nodeId);
/** The node ids with an output in `flowRunId`, in no set order. */
export const listKeys = (flowRunId) => call(store.listKeys, flowRunId);
/** Writes a global as JSON text (write-once: 'global-already-exists'). */
export const putGlobalText = (key, text) => call(store.putGlobal, key, text);
/** Writes or overwrites a global as JSON text. */
export const upsertGlobalText = (key, text) => call(store.upsertGlobal, key, text);
/** A global as the exact text written; `undefined` if not written. */
export const getGlobalText = (key) => call(store.getGlobal, key);

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

// Runs the SDK once over a fake store when the module loads. In a component
// the module loads when the component is built (the engine is snapshotted
// after it), so everything a step's run goes through is compiled and set up
// in the snapshot: SpiderMonkey compiles a function's bytecode on its first
// call and creates standard objects such as `JSON` when first used, and a
// step starts from the snapshot every time. No store call is made.
function warmUp() {
  const run = '00000000-0000-4000-8000-000000000000';
  const text = '{"a":[1,2.5,"b",true,null],"b":{"c":"d"}}';
  store = {
    put() {},
    get: () => text,
    listKeys: () => [run],
    putGlobal() {},
    upsertGlobal() {},
    getGlobal: () => undefined,
  };
  try {
    const invocation = { flowRunId: run, nodeId: run, params: text, upstream: [{ name: 'u', nodeId: run }] };
    exportStep((ctx) => {
      ctx.params({});
      ctx.upstreamId('u');
      const value = ctx.upstream('u');
      ctx.output({ s: `${value.a.length} items`, a: value.a, n: 1 });
    })(invocation);
    get(run, run);
    listKeys(run);
    putGlobal('k', 1);
    upsertGlobal('k', 2);
    getGlobal('k');
    const errors = [
      { payload: { tag: 'storage', val: 'x' } },
      new InvalidParams('x'),
      new MissingUpstream('x'),
      new EncodeError('x'),
      new TypeError('x'),
    ];
    for (const error of errors) {
      try {
        exportStep(() => {
          throw error;
        })(invocation);
      } catch {
        // a StepFailure, as the host would get it
      }
    }
    store = { ...store, get: () => { throw errors[0]; } };
    try {
      get(run, run);
    } catch {
      // a StoreError
    }
  } finally {
    store = wit;
  }
}

warmUp();
