// Builds one JavaScript step into a component with componentize-js:
//
//     node componentize.mjs SOURCE.js WIT_DIR OUT.wasm
//
// Like `jco componentize SOURCE.js --wit WIT_DIR --world-name step
// --disable all`, except that the source is read in place, so it can import
// other modules by relative path (the SDK, `./contextstore-step.js`); jco
// copies the source alone into a scratch directory first. Every engine
// feature that needs WASI (stdio, random, clocks, http, fetch-event) is off,
// so the component imports only the store.
import { writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

import { componentize } from '@bytecodealliance/componentize-js';

const [source, wit, out] = process.argv.slice(2);
if (!source || !wit || !out) {
  console.error('usage: node componentize.mjs SOURCE.js WIT_DIR OUT.wasm');
  process.exit(2);
}
const sourcePath = resolve(source);
const witPath = resolve(wit);
const outPath = resolve(out);
// The engine sees the source's directory as its root: imports resolve there.
process.chdir(dirname(sourcePath));
const { component } = await componentize({
  sourcePath,
  witPath,
  worldName: 'step',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(outPath, component);
