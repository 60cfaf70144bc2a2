// Hostile test step: makes one call the host must refuse, and reports it.
//
// Params: {"mode": "...", "target": "<uuid>"} with the modes
//   ungranted-global  putGlobal("secret/key", "1") without a grant for it
//   write-other-node  put into this flow run under the node id `target`
//   invalid-json      put of the text `{not json` as this node's output
//   loop              spins forever (the host must interrupt it)
//   huge-key          putGlobal("hostile/kkk…", "1") with a 1 MiB key
//   chatty-stderr     1 MiB of console.error lines, then throws
//                     Error("chatty-stderr: the panic after the chatter")
//   round-trip        puts ROUND_TRIP as this node's output, gets it back, and
//                     fails unless it is the same text (then returns)
//
// The store's error is returned unchanged as `step-error.store(<error>)`, so
// the host sees the same typed error from every language. If the call is
// allowed, the step fails with `failed("<mode>: bad call was allowed")`.

import { get, put, putGlobal } from 'worldinterface:contextstore/store@0.1.0';

// Big integers, -0, a duplicate key and \u escapes: text that a parse and
// re-serialize would change.
const ROUND_TRIP =
  '[123456789012345678901234567890,18446744073709551616,-0,{"a":1,"a":2},' +
  '"\\u00e9\\ud83d\\ude00"]';

class StepError extends Error {
  constructor(tag, val) {
    super(`${tag}: ${typeof val === 'string' ? val : JSON.stringify(val)}`);
    this.payload = { tag, val };
  }
}

// Keeps the loop observable, so no engine may drop it.
globalThis.spins = 0;

function chatterThenThrow() {
  const line = 'chatter '.repeat(8);
  for (let i = 0; i < 16384; i++) {
    console.error(line);
  }
  throw new Error('chatty-stderr: the panic after the chatter');
}

function roundTrip(flowRunId, nodeId) {
  let back;
  try {
    put(flowRunId, nodeId, ROUND_TRIP);
    back = get(flowRunId, nodeId);
  } catch (e) {
    if (e && e.payload) throw new StepError('store', e.payload);
    throw e;
  }
  if (back !== ROUND_TRIP) {
    throw new StepError('failed', `round-trip: the output came back as ${JSON.stringify(back)}`);
  }
}

function spin() {
  for (;;) {
    globalThis.spins++;
  }
}

export function run(invocation) {
  let params;
  try {
    params = JSON.parse(invocation.params);
  } catch (e) {
    throw new StepError('invalid-params', `params are not JSON: ${e.message}`);
  }
  if (params === null || typeof params !== 'object' || Array.isArray(params)) {
    throw new StepError('invalid-params', 'params must be a JSON object');
  }

  const { mode, target } = params;
  const { flowRunId, nodeId } = invocation;
  let badCall;
  switch (mode) {
    case 'ungranted-global':
      badCall = () => putGlobal('secret/key', '1');
      break;
    case 'write-other-node':
      if (typeof target !== 'string') {
        throw new StepError('invalid-params', '"target" must be a string');
      }
      badCall = () => put(flowRunId, target, '1');
      break;
    case 'invalid-json':
      badCall = () => put(flowRunId, nodeId, '{not json');
      break;
    case 'loop':
      badCall = spin;
      break;
    case 'huge-key': {
      const key = 'hostile/' + 'k'.repeat((1 << 20) - 'hostile/'.length);
      badCall = () => putGlobal(key, '1');
      break;
    }
    case 'chatty-stderr':
      badCall = chatterThenThrow;
      break;
    case 'round-trip':
      roundTrip(flowRunId, nodeId);
      return;
    default:
      throw new StepError('invalid-params', `unknown mode ${JSON.stringify(mode ?? null)}`);
  }

  try {
    badCall();
  } catch (e) {
    if (e && e.payload) throw new StepError('store', e.payload); // unchanged
    throw e;
  }
  throw new StepError('failed', `${mode}: bad call was allowed`);
}
