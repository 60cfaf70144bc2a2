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
//
// It also rewrites the generated bindings before the engine is snapshotted
// with them: the componentize-js 0.22.0 bindings run every export as an
// `async` function and wrap every export and import call in jco's
// component-model task machinery (task objects, promises, awaits), which the
// `step` world, all synchronous functions, never needs (`leanBindings`); and
// just before the snapshot they run the SDK once over faked store imports,
// so that what a run needs is compiled and created in the snapshot instead
// of in every run, which starts from it (`warmUpBindings`). Between them,
// these were most of a step's run time.
import { writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

import { componentize } from '@bytecodealliance/componentize-js';

const [source, wit, out] = process.argv.slice(2);
if (!source || !wit || !out) {
  console.error('usage: node componentize.mjs SOURCE.js WIT_DIR OUT.wasm');
  process.exit(2);
}

// componentize() takes the bindings from this module's `splicer` object (one
// module instance per URL, so this is the very object it calls); wrapping
// `spliceBindings` is the one place to rewrite the bindings before the
// engine is pre-initialized with them.
const { splicer } = await import(
  new URL('../lib/spidermonkey-embedding-splicer.js', import.meta.resolve('@bytecodealliance/componentize-js'))
);
const spliceBindings = splicer.spliceBindings;
splicer.spliceBindings = (...args) => {
  const spliced = spliceBindings.apply(splicer, args);
  return { ...spliced, jsBindings: leanBindings(spliced.jsBindings, spliced.exports, spliced.imports) };
};

/** Replaces the one match of `pattern` in `text` (or `count` matches, with a /g pattern). */
function replaceChecked(text, pattern, replacement, count, what) {
  let n = 0;
  const result = text.replace(pattern, (...m) => {
    n += 1;
    return typeof replacement === 'function' ? replacement(...m) : replacement;
  });
  if (n !== count) {
    throw new Error(
      `componentize.mjs: ${what}: found ${n} of ${count} in the componentize-js bindings; ` +
        'the bindings generator changed, update leanBindings to match',
    );
  }
  return result;
}

/**
 * The bindings componentize-js generated, without jco's task machinery:
 *
 * - an import call is the core call, lifted and lowered as generated, with
 *   no task object around it;
 * - an export is a plain function: it calls the step, lowers the result and
 *   returns a promise the engine finds already settled (the engine requires
 *   a promise and drives its event loop until it settles). If the exported
 *   function returns a promise (an `async` export), the result is lowered
 *   when it settles, as before;
 * - UTF-8 encoding no longer counts code points nobody reads;
 * - `_debugLog`, a no-op without `process.env.JCO_DEBUG` (which the engine
 *   does not have), is not called on the call paths;
 * - `bindExports` warms up (`warmUpBindings`).
 *
 * Every rewrite checks that it matched exactly where it should, so a
 * different generator output fails the build instead of building something
 * else.
 */
function leanBindings(js, exports, imports) {
  // Imports: drop the task around the core call.
  js = replaceChecked(
    js,
    / {2}_debugLog\('\[Instruction::CallWasm\] enter', \{[^}]*\}\);\n {2}const hostProvided = false;\n\s*const \[task, _wasm_call_currentTaskID\] = createNewCurrentTask\(\{[^}]*\}\);\n\s*const started = task\.enterSync\(\);\n\s*if \(null!== null\) \{[^}]*\}\n\s*let ret;\n\s*try \{\n\s*ret = +_withGlobalCurrentTaskMeta\(\{\n\s*taskID: task\.id\(\),\n\s*componentIdx: task\.componentIdx\(\),\n\s*fn: \(\) => (\$import_[\w$]+\([^)]*\)),\n\s*\}\);\n\s*\} catch \(err\) \{[^}]*\}\n/g,
    (_, call) => `  const ret = ${call};\n`,
    imports.length,
    'import call tasks',
  );
  js = replaceChecked(
    js,
    / {2}_debugLog\('\[Instruction::Return\]', \{[^}]*\}\);\n {2}const retCopy = (variant\d+);\n {2}task\.resolve\(\[retCopy\.val\]\);\n {2}task\.exit\(\);\n/g,
    (_, variant) => `  const retCopy = ${variant};\n`,
    imports.length,
    'import return tasks',
  );
  // Exports: synchronous, with the result lowered in place.
  js = replaceChecked(
    js,
    /async function (export_[\w$]+)\(([^)]*)\) \{\n([\s\S]*?) {2}_debugLog\(' \[Instruction::CallInterface\] \(sync, @ enter\)'\);\n[\s\S]*? {2}const started = await task\.enter\(\{ isHost: hostProvided \}\);\n[\s\S]*? {2}let ret;\n {2}try \{\n {4}ret = \{ tag: 'ok', val: await {2}_withGlobalCurrentTaskMetaAsync\(\{\n {6}componentIdx: task\.componentIdx\(\),\n {6}taskID: task\.id\(\),\n {6}fn: \(\) => ([\s\S]*?),\n {4}\}\)\n {2}\};\n\} catch \(e\) \{\n {2}ret = \{ tag: 'err', val: getErrorPayload\(e\) \};\n\}\n([\s\S]*?)_debugLog\('\[Instruction::Return\]', \{[^}]*\}\);\ntask\.resolve\(\[ret\]\);\ntask\.exit\(\);\n\}\n/g,
    (_, name, params, lift, call, lower) =>
      `function ${name}(${params}) {\n${lift}` +
      `  const __lower = (ret) => {\n${lower}  };\n` +
      `  let ret;\n` +
      `  try {\n    ret = ${call};\n  } catch (e) {\n` +
      `    __lower({ tag: 'err', val: getErrorPayload(e) });\n    return __SETTLED;\n  }\n` +
      `  if (ret !== null && (typeof ret === 'object' || typeof ret === 'function') && typeof ret.then === 'function') {\n` +
      `    return Promise.resolve(ret).then(\n` +
      `      (val) => { __lower({ tag: 'ok', val }); },\n` +
      `      (e) => { __lower({ tag: 'err', val: getErrorPayload(e) }); },\n    );\n  }\n` +
      `  __lower({ tag: 'ok', val: ret });\n  return __SETTLED;\n}\n`,
    exports.length,
    'export tasks',
  );
  js = replaceChecked(
    js,
    'const res = { ptr, len: buf.length, codepoints: [...s].length };',
    'const res = { ptr, len: buf.length };',
    1,
    'code point count',
  );
  js = replaceChecked(
    js,
    'function bindExports(sourceName) {',
    'function __bindExports(sourceName) {',
    1,
    'bindExports',
  );
  // The promise every synchronous export returns.
  return `const __SETTLED = Promise.resolve();\n${js}\n${warmUpBindings(js, exports, imports)}`;
}

/**
 * The bindings' `bindExports` (which the engine calls once the step module
 * has run, just before it is snapshotted), followed by a warm-up: the `run`
 * export called twice with a made-up invocation and the core store imports
 * faked, once all succeeding with nothing stored and once all failing with
 * `storage`. It calls the SDK's warm-up (`contextstore-step.js`) in place of
 * the step (nothing at all if the module does not use the SDK), so that the
 * whole path of a run, bindings and SDK, is compiled and its engine state
 * created in the snapshot. The memory it takes is freed after the first call.
 */
function warmUpBindings(js, exports, imports) {
  const [name, signature] = exports.length === 1 ? exports[0] : [];
  if (name !== 'export_run' || signature.params.length !== 8 || !signature.retptr || signature.paramptr) {
    throw new Error('componentize.mjs: the warm-up expects the one export `run` of the `step` world');
  }
  const bound = /^let \[\$memory, \$realloc, ([^\]\n]*)\] = \$bindings;$/m.exec(js);
  const cores = bound ? bound[1].split(', ') : [];
  if (cores.length !== imports.length || !cores.every((c) => /^\$import_[\w$]+$/.test(c))) {
    throw new Error('componentize.mjs: the core store imports are not where the warm-up expects them');
  }
  return `
function bindExports(sourceName) {
  __bindExports(sourceName);
  const key = Symbol.for('contextstore-step.warm-up');
  const warmUp = contentGlobal[key];
  delete contentGlobal[key];
  const step = run;
  const cores = [${cores.join(', ')}];
  const strings = ['00000000-0000-4000-8000-000000000000', '{"warm":[1,2.5,"up",true,null],"up":{"a":"b"}}', 'up']
    .map((s) => TEXT_ENCODER_UTF8.encode(s));
  // 0: the result every core import returns; 32: the export's result;
  // 64: the invocation's one upstream; 96: the strings.
  const size = 96 + strings.reduce((n, s) => n + s.length, 0);
  const base = $realloc(0, 0, 8, size);
  new Uint8Array($memory.buffer, base, size).fill(0);
  const at = [];
  let offset = base + 96;
  for (const s of strings) {
    new Uint8Array($memory.buffer, offset, s.length).set(s);
    at.push([offset, s.length]);
    offset += s.length;
  }
  const [id, params, upstream] = at;
  const view = dataView($memory);
  view.setUint32(base + 64, upstream[0], true);
  view.setUint32(base + 68, upstream[1], true);
  view.setUint32(base + 72, id[0], true);
  view.setUint32(base + 76, id[1], true);
  const fake = () => base;
  try {
    run = typeof warmUp === 'function' ? warmUp : () => {};
    ${cores.join(' = ')} = fake;
    for (const fail of [false, true]) {
      view.setUint8(base, fail ? 1 : 0); // result: ok | err
      view.setUint8(base + 4, fail ? 6 : 0); // ok: none, [], () | err: storage
      view.setUint32(base + 8, fail ? upstream[0] : 0, true);
      view.setUint32(base + 12, fail ? upstream[1] : 0, true);
      export_run(id[0], id[1], id[0], id[1], params[0], params[1], base + 64, 1, base + 32);
    }
  } finally {
    run = step;
    [${cores.join(', ')}] = cores;
  }
}
`;
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
