// Step `join`: joins the outputs of the upstream steps `words` and `count`.
//
// Input:  the output of the upstream named `words`, e.g. {"words": ["Hello,", "Ada!"]}
//         and of the upstream named `count`, e.g. {"length": 11}
// Output: {"summary": "2 words, 11 bytes", "words": ["Hello,", "Ada!"], "length": 11}
//
// How a step works:
//
// - The host calls the exported function `run(invocation)` once per
//   invocation. WIT names become camelCase: `invocation.flowRunId`,
//   `invocation.nodeId`, `invocation.params` (JSON text, "null" when none),
//   `invocation.upstream` (a list of `{ name, nodeId }`).
// - Read an upstream's output with `get(flowRunId, nodeId)`: it returns the
//   JSON text, or `undefined` when the upstream has not written one.
// - Write this step's own output, once, with `put(flowRunId, nodeId, jsonText)`.
// - A store call that fails throws an error whose `payload` is the store's
//   error variant, e.g. `{ tag: 'access-denied', val: '...' }` or
//   `{ tag: 'already-exists' }`.
// - Returning from `run` means `ok`. To fail the step, throw an error whose
//   `payload` is a `step-error` variant: `{ tag: 'invalid-params', val }`,
//   `{ tag: 'store', val: storeError }` or `{ tag: 'failed', val }`.

import { get, put } from 'worldinterface:contextstore/store@0.1.0';

/** Fails the step with the `step-error` variant `{ tag, val }`. */
class StepError extends Error {
  constructor(tag, val) {
    super(`${tag}: ${typeof val === 'string' ? val : JSON.stringify(val)}`);
    this.payload = { tag, val };
  }
}

/** Runs a store call; a store error fails the step with `store(<error>)`. */
function storeCall(call) {
  try {
    return call();
  } catch (e) {
    if (e && e.payload) throw new StepError('store', e.payload);
    throw e;
  }
}

/** Returns the parsed output of the upstream named `name`. */
function readUpstream(invocation, name) {
  const upstream = invocation.upstream.find((u) => u.name === name);
  const text = upstream && storeCall(() => get(invocation.flowRunId, upstream.nodeId));
  if (text === undefined) {
    throw new StepError('failed', `missing upstream ${name}`);
  }
  return JSON.parse(text); // the store only holds valid JSON
}

export function run(invocation) {
  // This step takes no parameters.
  const words = readUpstream(invocation, 'words')?.words;
  const length = readUpstream(invocation, 'count')?.length;
  if (!Array.isArray(words) || typeof length !== 'number') {
    throw new StepError('failed', 'upstream outputs are not {"words": [...]} and {"length": n}');
  }

  const output = { summary: `${words.length} words, ${length} bytes`, words, length };

  try {
    put(invocation.flowRunId, invocation.nodeId, JSON.stringify(output));
  } catch (e) {
    switch (e?.payload?.tag) {
      case 'already-exists':
        // Our output is already stored: a retry of a run that got this far.
        // The step is done.
        return;
      case undefined:
        throw e; // not a store error
      default:
        throw new StepError('store', e.payload);
    }
  }
}
