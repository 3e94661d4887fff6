// `s3s-fs` made atomic as S3 is: shared by `examples/s3-server.rs` and the
// tests' in-process server (`tests/common/s3.rs`), which `include!` it.

/// `s3s-fs` with its writes one at a time, and no read during a write. It
/// checks `If-Match` and `If-None-Match` and then writes, as two steps (two
/// conditional writes of one object can both pass the check), and keeps an
/// object's body and metadata in two files (a read during a write can see
/// the new ETag with the old metadata). AWS S3 and MinIO decide and write
/// atomically and never show a torn object; the lock gives the tests that.
pub struct Serialized {
    fs: s3s_fs::FileSystem,
    writes: tokio::sync::RwLock<()>,
}

impl Serialized {
    /// Serves `fs`.
    pub fn new(fs: s3s_fs::FileSystem) -> Self {
        Serialized {
            fs,
            writes: tokio::sync::RwLock::new(()),
        }
    }
}

#[async_trait::async_trait]
impl s3s::S3 for Serialized {
    async fn head_bucket(
        &self,
        req: s3s::S3Request<s3s::dto::HeadBucketInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadBucketOutput>> {
        let _reading = self.writes.read().await;
        self.fs.head_bucket(req).await
    }

    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        let _reading = self.writes.read().await;
        self.fs.head_object(req).await
    }

    async fn get_object(
        &self,
        req: s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
        let _reading = self.writes.read().await;
        self.fs.get_object(req).await
    }

    async fn put_object(
        &self,
        mut req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        // The whole body first: a client that dies mid-upload (kill -9)
        // must leave no torn object behind, as on S3, where s3s-fs would
        // leave the part it had written.
        if let Some(mut body) = req.input.body.take() {
            let mut whole = Vec::new();
            while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                match chunk {
                    Ok(b) => whole.extend_from_slice(&b),
                    Err(e) => return Err(s3s::s3_error!(IncompleteBody, "the body stopped: {e}")),
                }
            }
            req.input.body = Some(s3s::dto::StreamingBlob::from(s3s::Body::from(
                bytes::Bytes::from(whole),
            )));
        }
        let _one = self.writes.write().await;
        self.fs.put_object(req).await
    }

    async fn delete_object(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectOutput>> {
        let _one = self.writes.write().await;
        self.fs.delete_object(req).await
    }

    async fn list_objects_v2(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        let _reading = self.writes.read().await;
        self.fs.list_objects_v2(req).await
    }
}

