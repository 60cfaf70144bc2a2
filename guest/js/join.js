// Step `join`: joins the outputs of the upstream steps `words` and `count`.
//
// Input:  the output of the upstream named `words`, e.g. {"words": ["Hello,", "Ada!"]}
//         and of the upstream named `count`, e.g. {"length": 11}
// Output: {"summary": "2 words, 11 bytes", "words": ["Hello,", "Ada!"], "length": 11}
//
// Built on the SDK in contextstore-step.js: the step is a function of a
// `Context`; errors it throws reach the host as the WIT `step-error`.

import { Failed, exportStep } from './contextstore-step.js';

export const run = exportStep((ctx) => {
  const words = ctx.upstream('words')?.words; // MissingUpstream when there is none
  const length = ctx.upstream('count')?.length;
  if (!Array.isArray(words) || typeof length !== 'number') {
    throw new Failed('upstream outputs are not {"words": [...]} and {"length": n}');
  }
  ctx.output({ summary: `${words.length} words, ${length} bytes`, words, length });
});
