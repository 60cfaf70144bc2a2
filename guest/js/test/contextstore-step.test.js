// Unit tests of contextstore-step.js, with the store imports replaced by
// fake-store.js. Run with guest/js/test.sh.

import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';

import * as cs from '../contextstore-step.js';
import { state } from './fake-store.js';

const RUN = '00000000-0000-4000-8000-000000000001';
const ME = '00000000-0000-4000-8000-000000000002';
const GREET = '00000000-0000-4000-8000-000000000003';

const invocation = (params = 'null') => ({
  flowRunId: RUN,
  nodeId: ME,
  params,
  upstream: [{ name: 'greet', nodeId: GREET }],
});

/** Runs `step` as the host would: the WIT step-error, or undefined for ok. */
function runStep(step, inv = invocation()) {
  try {
    cs.exportStep(step)(inv);
  } catch (e) {
    assert.ok(e.payload, `an error without payload would trap: ${e}`);
    return e.payload;
  }
  return undefined;
}

beforeEach(() => {
  state.outputs.clear();
  state.globals.clear();
  state.fail = undefined;
});

test('values round-trip', () => {
  const values = [null, 0, -1, 1.5, 1e-300, '', 'ünï\u2028', [1, [2, [3]]], { a: { b: null } }, true];
  values.forEach((value, i) => {
    cs.putGlobal(`k${i}`, value);
    assert.deepEqual(cs.getGlobal(`k${i}`), value);
  });
  const ctx = new cs.Context(invocation());
  ctx.output({ x: [1, 2.25, 'three'] });
  assert.deepEqual(cs.get(RUN, ME), { x: [1, 2.25, 'three'] });
  assert.deepEqual(cs.listKeys(RUN), [ME]);
  assert.equal(cs.getGlobal('missing'), undefined);
});

test('text calls are exact', () => {
  cs.upsertGlobalText('t', '{ "a" : 1 }');
  assert.equal(cs.getGlobalText('t'), '{ "a" : 1 }');
  assert.equal(cs.getText(RUN, GREET), undefined);
});

test('every store error maps to a StoreError of its kind, passed on unchanged', () => {
  const cases = [
    { tag: 'already-exists' },
    { tag: 'global-already-exists' },
    { tag: 'invalid-id', val: 'bad id' },
    { tag: 'invalid-json', val: 'bad json' },
    { tag: 'access-denied', val: 'no' },
    { tag: 'quota-exceeded', val: 'big' },
    { tag: 'storage', val: 'disk' },
  ];
  assert.deepEqual(cases.map((c) => c.tag), cs.STORE_ERROR_KINDS);
  for (const wit of cases) {
    state.fail = wit;
    assert.throws(
      () => cs.get(RUN, ME),
      (e) => e instanceof cs.StoreError && e.kind === wit.tag && e.detail === (wit.val ?? ''),
    );
    assert.deepEqual(runStep((ctx) => ctx.output(1)), { tag: 'store', val: wit });
  }
});

test('write-once errors', () => {
  cs.put(RUN, ME, 1);
  assert.throws(() => cs.put(RUN, ME, 2), (e) => e.kind === 'already-exists');
  cs.upsertGlobal('g', 1);
  assert.throws(() => cs.putGlobal('g', 2), (e) => e.kind === 'global-already-exists');
  assert.equal(cs.get(RUN, ME), 1);
});

test('upstream by name', () => {
  state.outputs.set(`${RUN}/${GREET}`, '{"greeting": "Hello"}');
  const ctx = new cs.Context(invocation());
  assert.deepEqual(ctx.upstream('greet'), { greeting: 'Hello' });
  assert.equal(ctx.upstreamId('greet'), GREET);
  assert.equal(ctx.upstreamId('nope'), undefined);
});

test('a missing upstream is a clear error', () => {
  const ctx = new cs.Context(invocation());
  assert.throws(() => ctx.upstream('nope'), (e) => e instanceof cs.MissingUpstream && e.message === 'missing-upstream: no upstream named `nope`');
  assert.throws(() => ctx.upstream('greet'), /has no output yet/);
  assert.deepEqual(runStep((c) => c.upstream('nope')), {
    tag: 'failed',
    val: 'missing-upstream: no upstream named `nope`',
  });
});

test('params', () => {
  assert.equal(new cs.Context(invocation()).params(), null);
  assert.deepEqual(new cs.Context(invocation()).params({}), {});
  assert.deepEqual(new cs.Context(invocation('{"n": 3}')).params(), { n: 3 });
  assert.equal(runStep((c) => c.params(), invocation('{nope')).tag, 'invalid-params');
});

test('step errors reach the host', () => {
  const raises = (e) => () => {
    throw e;
  };
  assert.deepEqual(runStep(raises(new cs.InvalidParams('need n'))), { tag: 'invalid-params', val: 'need n' });
  assert.deepEqual(runStep(raises(new cs.Failed('broke'))), { tag: 'failed', val: 'broke' });
  assert.deepEqual(runStep(raises(new TypeError('x is undefined'))), { tag: 'failed', val: 'TypeError: x is undefined' });
  assert.deepEqual(runStep(raises('a string')), { tag: 'failed', val: 'Error: a string' });
  assert.equal(runStep((c) => c.output(1)), undefined);
});

test('a raw binding error leaving the step is passed on', async () => {
  const raw = await import('worldinterface:contextstore/store@0.1.0');
  assert.deepEqual(
    runStep(() => {
      raw.putGlobal('k', '1');
      raw.putGlobal('k', '2');
    }),
    { tag: 'store', val: { tag: 'global-already-exists' } },
  );
  const own = new Error('mine');
  own.payload = { tag: 'failed', val: 'mine' };
  assert.deepEqual(
    runStep(() => {
      throw own;
    }),
    { tag: 'failed', val: 'mine' },
  );
});

test('the first upstream of a name wins', () => {
  const inv = invocation();
  inv.upstream.push({ name: 'greet', nodeId: ME });
  assert.equal(new cs.Context(inv).upstreamId('greet'), GREET);
});

test('values without a JSON form fail the step', () => {
  const ctx = new cs.Context(invocation());
  const cycle = {};
  cycle.self = cycle;
  for (const bad of [undefined, () => 1, 10n, cycle]) {
    assert.throws(() => ctx.output(bad), cs.EncodeError);
  }
  assert.equal(state.outputs.size, 0);
  assert.match(runStep((c) => c.output(undefined)).val, /^encode: /);
});

test('the build-time warm-up runs the SDK through the store it finds', () => {
  // componentize.mjs's bindings call it with every store call faked; here
  // the fake store stands in for the bindings.
  const warmUp = globalThis[Symbol.for('contextstore-step.warm-up')];
  assert.equal(typeof warmUp, 'function');
  warmUp(invocation('{"a": [1]}'));
  assert.deepEqual(cs.get(RUN, ME), { a: [1], name: 'greet', text: `${ME}: {"a":[1]}` });
  assert.deepEqual(cs.getGlobal('greet'), { a: [1] });
  state.fail = { tag: 'storage', val: 'disk' };
  assert.throws(
    () => warmUp(invocation()),
    (e) => JSON.stringify(e.payload) === JSON.stringify({ tag: 'store', val: { tag: 'storage', val: 'disk' } }),
  );
});
