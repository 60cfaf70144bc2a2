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
//                     out of `run` unhandled, and jco traps (a crash)
//   round-trip        puts ROUND_TRIP as this node's output, gets it back, and
//                     fails unless it is the same text (then returns)
//
// Built on the SDK in contextstore-step.js. The bad calls go through its raw
// text calls (putText, putGlobalText), so the text reaches the host as
// written; the StoreError they throw leaves the step, and the SDK passes the
// store's error back unchanged as `step-error.store(<error>)`: the host sees
// the same typed error from every language. If the call is allowed, the step
// fails with `failed("<mode>: bad call was allowed")`.

import {
  Failed,
  InvalidParams,
  exportStep,
  getText,
  putGlobalText,
  putText,
} from './contextstore-step.js';

// Big integers, -0, a duplicate key and \u escapes: text that a parse and
// re-serialize would change.
const ROUND_TRIP =
  '[123456789012345678901234567890,18446744073709551616,-0,{"a":1,"a":2},' +
  '"\\u00e9\\ud83d\\ude00"]';

// Keeps the loop observable, so no engine may drop it.
globalThis.spins = 0;

function chatterThenThrow() {
  const line = 'chatter '.repeat(8);
  for (let i = 0; i < 16384; i++) {
    console.error(line);
  }
  throw new Error('chatty-stderr: the panic after the chatter');
}

function roundTrip(ctx) {
  putText(ctx.flowRunId, ctx.nodeId, ROUND_TRIP);
  const back = getText(ctx.flowRunId, ctx.nodeId);
  if (back !== ROUND_TRIP) {
    throw new Failed(`round-trip: the output came back as ${JSON.stringify(back)}`);
  }
}

function spin() {
  for (;;) {
    globalThis.spins++;
  }
}

const step = exportStep((ctx) => {
  const params = ctx.params(); // InvalidParams when not JSON
  if (params === null || typeof params !== 'object' || Array.isArray(params)) {
    throw new InvalidParams('params must be a JSON object');
  }

  const { mode, target } = params;
  const { flowRunId, nodeId } = ctx;
  let badCall;
  switch (mode) {
    case 'ungranted-global':
      badCall = () => putGlobalText('secret/key', '1');
      break;
    case 'write-other-node':
      if (typeof target !== 'string') {
        throw new InvalidParams('"target" must be a string');
      }
      badCall = () => putText(flowRunId, target, '1');
      break;
    case 'invalid-json':
      badCall = () => putText(flowRunId, nodeId, '{not json');
      break;
    case 'loop':
      badCall = spin;
      break;
    case 'huge-key': {
      const key = 'hostile/' + 'k'.repeat((1 << 20) - 'hostile/'.length);
      badCall = () => putGlobalText(key, '1');
      break;
    }
    // 'chatty-stderr' is handled in `run`, outside the SDK.
    case 'round-trip':
      roundTrip(ctx);
      return;
    default:
      throw new InvalidParams(`unknown mode ${JSON.stringify(mode ?? null)}`);
  }

  badCall(); // a refused call throws a StoreError: the store's error, unchanged
  throw new Failed(`${mode}: bad call was allowed`);
});

// Whether the parameters ask for `chatty-stderr`.
function isChattyStderr(paramsJson) {
  try {
    return JSON.parse(paramsJson)?.mode === 'chatty-stderr';
  } catch {
    return false;
  }
}

// `chatty-stderr` ends in a crash, as a panic does in Rust: its error must
// leave `run` as it is, for jco traps on an error that carries no step-error.
// exportStep turns every error into a step error, so that mode runs outside it.
export function run(invocation) {
  if (isChattyStderr(invocation.params)) chatterThenThrow();
  step(invocation);
}
