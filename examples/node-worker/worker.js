// A cronwire remote worker in Node.js, on @grpc/grpc-js: it proves the WorkerService contract
// (protos/cronwire/v1/worker_service.proto) from a second language.
//
//   npm ci && CRONWIRE_SERVER=127.0.0.1:50051 CRONWIRE_TOKEN=cwk_... QUEUES=billing node worker.js
//
// One Connect stream: a hello (identity, queues, task names, free slots), then the server pushes
// assignments; each runs a task of TASKS with the execution's arguments, sends its output as
// chunks and its result (or failure), every message naming the lease token. Heartbeats list the
// leases held. A cancel aborts the task's AbortSignal. The stream is reopened with backoff when
// it breaks; SIGTERM drains (no new work, running tasks get DRAIN_GRACE seconds, the rest are
// released back to the queue).
"use strict";

const os = require("os");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = process.env.CRONWIRE_PROTOS || path.join(__dirname, "..", "..", "protos");
const definition = protoLoader.loadSync(path.join(PROTOS, "cronwire/v1/worker_service.proto"), {
  includeDirs: [PROTOS],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { WorkerService } = grpc.loadPackageDefinition(definition).cronwire.v1;

const SERVERS = (process.env.CRONWIRE_SERVER || "127.0.0.1:50051").split(",");
const TOKEN = process.env.CRONWIRE_TOKEN || "";
const QUEUES = (process.env.QUEUES || "billing").split(",");
const CONCURRENCY = Number(process.env.CONCURRENCY || 4);
const IDENTITY = process.env.WORKER_IDENTITY || `${os.hostname()}:${process.pid}`;
const DRAIN_GRACE_MS = Number(process.env.DRAIN_GRACE || 30) * 1000;

// The tasks: (arguments, context) -> a JSON value, or a Promise of one. `context.log(text)` is
// the execution's output; `context.signal` aborts on cancel; `context.attempt`, `context.execution`.
const TASKS = {
  "send-invoices": async (args, context) => {
    context.log(`node sends the invoices of ${args.month}\n`);
    return { month: args.month, sent: 42, worker: IDENTITY, runtime: `node ${process.version}` };
  },
  wait: (args, context) =>
    new Promise((resolve, reject) => {
      context.log("waiting to be cancelled\n");
      context.signal.addEventListener("abort", () => reject(Object.assign(new Error("cancelled"), { name: "Cancelled" })));
    }),
};

// JSON <-> google.protobuf.Value / Struct, as proto-loader represents them (the well-known
// types keep their camelCase field names, whatever keepCase says).
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value) };
}
function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}
function fromValue(value) {
  switch (value.kind) {
    case "numberValue": return value.numberValue;
    case "stringValue": return value.stringValue;
    case "boolValue": return value.boolValue;
    case "listValue": return (value.listValue.values || []).map(fromValue);
    case "structValue": return fromStruct(value.structValue);
    default: return null;
  }
}
function fromStruct(struct) {
  const object = {};
  for (const [key, value] of Object.entries((struct && struct.fields) || {})) object[key] = fromValue(value);
  return object;
}

const runs = new Map(); // lease token -> { execution, abort, promise }
let stream = null;
let pending = []; // results and releases not yet written (the stream was down)
let draining = false;
let stopped = false;

function free() {
  return draining ? 0 : Math.max(0, CONCURRENCY - runs.size);
}

function send(message) {
  if (stream) stream.write(message);
  else if (message.result || message.release) pending.push(message);
}

function heartbeat() {
  const leases = [...runs.entries()].map(([token, run]) => ({ execution: run.execution, lease_token: token }));
  for (const message of pending) {
    const ended = message.result || message.release;
    leases.push({ execution: ended.execution, lease_token: ended.lease_token });
  }
  send({ heartbeat: { leases } });
}

function start(assignment) {
  const token = assignment.lease_token;
  if (free() <= 0) {
    send({ release: { execution: assignment.execution, lease_token: token } });
    return;
  }
  const task = TASKS[assignment.task] || (assignment.task === "" && Object.keys(TASKS).length === 1 ? Object.values(TASKS)[0] : null);
  const abort = new AbortController();
  const context = {
    execution: assignment.execution,
    attempt: assignment.attempt,
    signal: abort.signal,
    log: (text) => send({ output: { execution: assignment.execution, lease_token: token, text: String(text) } }),
  };
  const run = { execution: assignment.execution, abort };
  runs.set(token, run);
  run.promise = (async () => {
    let result;
    try {
      if (!task) throw Object.assign(new Error(`this worker has no task ${JSON.stringify(assignment.task)}`), { name: "UnknownTask", retryable: false });
      const value = await task(fromStruct(assignment.arguments), context);
      result = { success: value === undefined ? {} : { result: toValue(value) } };
    } catch (error) {
      result = {
        failure: {
          type: (error && error.name) || "Error",
          message: String((error && error.message) || error).slice(0, 4000),
          details: toStruct({ stack: String((error && error.stack) || "").slice(0, 16000) }),
          retryable: !(abort.signal.aborted || (error && error.retryable === false)),
        },
      };
    }
    if (!runs.has(token)) return; // released while draining
    runs.delete(token);
    send({ result: { execution: assignment.execution, lease_token: token, ...result } });
    send({ slots: { free_slots: free() } });
  })();
}

function connect(attempt) {
  if (stopped) return;
  const target = SERVERS[attempt % SERVERS.length];
  const client = new WorkerService(target, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (TOKEN) metadata.add("authorization", `Bearer ${TOKEN}`);
  const call = client.Connect(metadata);
  let timer = null;
  let welcomed = false;
  call.write({
    hello: { identity: IDENTITY, queues: QUEUES, tasks: Object.keys(TASKS), free_slots: free(), agent: `cronwire-node/${process.version}` },
  });
  call.on("data", (response) => {
    if (response.welcome) {
      welcomed = true;
      stream = call;
      const every = response.welcome.heartbeat_interval;
      const ms = Math.max(50, Number(every.seconds || 0) * 1000 + Number(every.nanos || 0) / 1e6);
      console.log(`cronwire node worker ${IDENTITY} connected to ${target} (queues ${QUEUES.join(",")})`);
      heartbeat(); // takes over the runs still going, before their results
      const waiting = pending;
      pending = [];
      for (const message of waiting) call.write(message);
      timer = setInterval(heartbeat, ms);
    } else if (response.assignment) {
      start(response.assignment);
    } else if (response.cancel) {
      const run = runs.get(response.cancel.lease_token);
      if (run) run.abort.abort();
    } else if (response.refused) {
      console.warn(`the server refused a message about ${response.refused.execution}: ${response.refused.message}`);
    }
  });
  let ended = false;
  const reconnect = (why) => {
    if (ended) return;
    ended = true;
    clearInterval(timer);
    if (stream === call) stream = null;
    client.close();
    if (stopped) return;
    if (!welcomed && why && [grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED, grpc.status.INVALID_ARGUMENT].includes(why.code)) {
      console.error(`cronwire node worker: ${why.details}`);
      process.exit(2);
    }
    const delay = Math.min(10000, 200 * 2 ** Math.min(attempt, 10)) * (0.5 + Math.random() / 2);
    console.warn(`stream to ${target} broke (${why ? why.details : "ended"}); reconnecting in ${Math.round(delay)} ms`);
    setTimeout(() => connect(attempt + 1), delay);
  };
  call.on("error", reconnect);
  call.on("end", () => reconnect(null));
}

async function drain() {
  if (draining) return;
  draining = true;
  send({ slots: { free_slots: 0 } });
  const running = [...runs.values()].map((run) => run.promise);
  await Promise.race([Promise.all(running), new Promise((resolve) => setTimeout(resolve, DRAIN_GRACE_MS))]);
  for (const [token, run] of runs) {
    runs.delete(token);
    run.abort.abort();
    send({ release: { execution: run.execution, lease_token: token } });
  }
  stopped = true;
  if (stream) stream.end();
  setTimeout(() => process.exit(0), 500);
}

process.on("SIGTERM", drain);
process.on("SIGINT", drain);
connect(0);
