// The AWS SDK for JavaScript v3 against OwnCDN's S3 mode, with its
// default settings but for the endpoint, path style, credentials and the
// certificate to trust.  Run by tests/test_s3_clients.py:
//
//   node s3_check.mjs <endpoint> <key id> <secret> <folder> [<CA file>]
//
// <folder> holds small.txt and big.bin (uploaded with lib-storage's
// Upload in 5 MiB parts).  Prints one JSON document of what the SDK
// returned; the Python test checks it.  Any SDK error exits non-zero.
import { readFileSync, createReadStream } from "node:fs";
import { Agent } from "node:https";
import { join } from "node:path";
import {
  S3Client, ListBucketsCommand, HeadBucketCommand, GetBucketLocationCommand, PutObjectCommand,
  GetObjectCommand, HeadObjectCommand, ListObjectsCommand, ListObjectsV2Command, CopyObjectCommand,
  DeleteObjectCommand, DeleteObjectsCommand, ListObjectVersionsCommand, GetBucketVersioningCommand,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";

const [endpoint, accessKeyId, secretAccessKey, folder, caFile] = process.argv.slice(2);
const client = new S3Client({
  endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId, secretAccessKey },
  ...(caFile ? { requestHandler: { httpsAgent: new Agent({ ca: readFileSync(caFile) }) } } : {}),
});
const send = (command) => client.send(command);
const Bucket = "files";
const key = "js/a b+c é.txt";
const report = {};

report.buckets = (await send(new ListBucketsCommand({}))).Buckets.map((b) => b.Name);
report.headBucket = (await send(new HeadBucketCommand({ Bucket }))).$metadata.httpStatusCode;
report.location = (await send(new GetBucketLocationCommand({ Bucket }))).LocationConstraint ?? null;
report.versioning = (await send(new GetBucketVersioningCommand({ Bucket }))).Status;

// A string body: signed, with an x-amz-checksum-crc32 header.
const put = await send(new PutObjectCommand({
  Bucket, Key: key, Body: "hello from javascript\n", ContentType: "text/plain", Metadata: { colour: "blue" },
}));
report.put = { etag: put.ETag, version: put.VersionId };
// A stream of unknown length: aws-chunked with a trailing checksum, even over HTTP.
const streamed = await send(new PutObjectCommand({
  Bucket, Key: "js/streamed.txt", Body: createReadStream(join(folder, "small.txt")),
}));
report.streamed = streamed.ETag;

const got = await send(new GetObjectCommand({ Bucket, Key: key }));
report.get = { body: await got.Body.transformToString(), etag: got.ETag, type: got.ContentType,
  metadata: got.Metadata };
const ranged = await send(new GetObjectCommand({ Bucket, Key: key, Range: "bytes=6-9" }));
report.range = { body: await ranged.Body.transformToString(), contentRange: ranged.ContentRange };
const head = await send(new HeadObjectCommand({ Bucket, Key: key }));
report.head = { length: head.ContentLength, etag: head.ETag, version: head.VersionId };

const upload = new Upload({
  client, params: { Bucket, Key: "js/big.bin", Body: createReadStream(join(folder, "big.bin")) },
  partSize: 5 * 1024 * 1024,
});
report.upload = (await upload.done()).ETag;
const big = await send(new GetObjectCommand({ Bucket, Key: "js/big.bin" }));
report.bigBack = Buffer.from(await big.Body.transformToByteArray()).equals(readFileSync(join(folder, "big.bin")));

const copied = await send(new CopyObjectCommand({
  Bucket, Key: "js/copy ü+.txt", CopySource: `${Bucket}/${encodeURIComponent(key).replace(/%2F/g, "/")}`,
}));
report.copy = copied.CopyObjectResult.ETag;

const v2 = await send(new ListObjectsV2Command({ Bucket, Prefix: "js/", Delimiter: "/" }));
report.listV2 = v2.Contents.map((o) => [o.Key, o.ETag, o.Size]);
const v1 = await send(new ListObjectsCommand({ Bucket, Delimiter: "/" }));
report.listV1Prefixes = (v1.CommonPrefixes ?? []).map((p) => p.Prefix);

const deleted = await send(new DeleteObjectCommand({ Bucket, Key: "js/copy ü+.txt" }));
report.delete = { marker: deleted.DeleteMarker ?? false, version: deleted.VersionId };
const versions = await send(new ListObjectVersionsCommand({ Bucket, Prefix: "js/copy" }));
report.versions = {
  versions: (versions.Versions ?? []).map((v) => [v.Key, v.VersionId, v.IsLatest]),
  markers: (versions.DeleteMarkers ?? []).map((m) => [m.Key, m.VersionId, m.IsLatest]),
};
const many = await send(new DeleteObjectsCommand({
  Bucket, Delete: { Objects: [{ Key: "js/streamed.txt" }, { Key: "js/big.bin" }, { Key: "js/none" }] },
}));
report.deleteMany = { deleted: (many.Deleted ?? []).map((d) => d.Key).sort(), errors: many.Errors ?? [] };
const left = await send(new ListObjectsV2Command({ Bucket, Prefix: "js/" }));
report.left = (left.Contents ?? []).map((o) => o.Key);

client.destroy();
console.log(JSON.stringify(report));
