// Step `{{name}}`: greets the text of its upstream `input`.
//
// Params: {"greeting": "Hi"} (optional; "Hello" when omitted)
// Input:  the output of the upstream named `input`, e.g. {"text": "Ada"}
// Output: {"message": "Hi, Ada!"}
//
// The SDK is contextstore-step.js, beside this file.

import { Failed, InvalidParams, exportStep } from './contextstore-step.js';

export const run = exportStep((ctx) => {
  const params = ctx.params({});
  if (typeof params !== 'object' || Array.isArray(params)) {
    throw new InvalidParams('params must be a JSON object');
  }
  const greeting = params.greeting ?? 'Hello';
  const text = ctx.upstream('input')?.text; // none: MissingUpstream
  if (typeof text !== 'string') throw new Failed('upstream input has no string "text"');
  ctx.output({ message: `${greeting}, ${text}!` });
});
